"""`manifest.json`: what an export directory holds, so verification can trust what it loads.

`ExportManifest` is the one record of an export: the sha256 of the checkpoint, every ONNX file
and every engine, the versions that produced them, the opset, precision, RAM settings, input
shapes, export options, parity and the engine arithmetic measured at export. `harden export`
builds it, `to_dict` writes it and `ExportManifest.read` reads it back typed — every field
checked once, an error naming the field (exit 2) — so no reader looks anything up by key.
`verify_files` recomputes the hashes: a twin or engine whose file does not match its manifest is
refused, because it is not what was exported and checked.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from harden.errors import InputError
from harden.export.arithmetic import ArithmeticVerdict
from harden.export.files import sha256_file
from harden.export.options import ExportOptions
from harden.json_fields import Fields
from harden.ram.config import RAMConfig

MANIFEST_FILE: Final = "manifest.json"
FORMAT: Final = "harden-export-manifest-v1"
FIX: Final = "export again with this harden"


@dataclass(frozen=True)
class Checkpoint:
    """The trained weights the export came from."""

    path: str
    sha256: str

    @classmethod
    def from_dict(cls, f: Fields) -> Checkpoint:
        return cls(path=f.string("path"), sha256=f.string("sha256"))


@dataclass(frozen=True)
class CalibrationRecipe:
    """How the int8 variant was calibrated, so verify can re-derive its quantisation
    (`harden.export.pipeline.calibration_images`)."""

    data: str
    split: str
    images: int
    seed: int
    image_size: tuple[int, int]
    static: bool  # images resized to the static graph's size
    num_classes: int
    rad: bool
    weights: str  # "reduced" (7-bit) or "full" (8-bit)
    method: str = "minmax"
    symmetric: bool = True
    per_channel: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, f: Fields) -> CalibrationRecipe:
        size = f.data.get("image_size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise f.bad("image_size", "[height, width] in pixels")
        return cls(
            data=f.string("data"),
            split=f.string("split"),
            images=f.integer("images", low=1, high=1_000_000),
            seed=f.integer("seed"),
            image_size=(size[0], size[1]),
            static=f.boolean("static"),
            num_classes=f.integer("num_classes", low=2, high=100_000),
            rad=f.boolean("rad"),
            weights=f.string("weights"),
            method=f.string("method"),
            symmetric=f.boolean("symmetric"),
            per_channel=f.boolean("per_channel"),
        )


@dataclass(frozen=True)
class RecordedParity:
    """What the manifest keeps of one file's parity check: the figures verify derives a gate from."""

    passed: bool
    reasons: list[str]
    images: int
    argmax_agreement: float
    miou_change: float
    max_abs_diff: float

    @classmethod
    def from_dict(cls, f: Fields) -> RecordedParity:
        agreement = f.number("argmax_agreement")
        if not 0 <= agreement <= 1:
            raise f.bad("argmax_agreement", "a fraction in [0, 1]")
        return cls(
            passed=f.boolean("passed"),
            reasons=f.strings("reasons"),
            images=f.integer("images", low=0, high=10**9),
            argmax_agreement=agreement,
            miou_change=f.number("miou_change"),
            max_abs_diff=f.number("max_abs_diff"),
        )


@dataclass(frozen=True)
class FileRecord:
    """One exported file: its name inside the export directory, size, sha256 and precision, plus
    what its kind records — fp16: the ops kept in fp32; int8: the quantised ops, the weight range
    and the calibration recipe; engines: the TensorRT build options."""

    path: str
    sha256: str
    precision: str
    bytes: int = 0
    kept_fp32: list[str] | None = None
    quantized_ops: list[str] | None = None
    int8_weights: str | None = None
    int8_weight_bits: int | None = None
    calibration: CalibrationRecipe | None = None
    build: dict[str, Any] | None = None  # TrtBuildOptions.to_dict: written for people and rebuilds

    @classmethod
    def of(cls, path: Path, root: Path, precision: str, **kinds: Any) -> FileRecord:
        """The record of the file `path` under `root`, hashed now."""
        return cls(str(path.relative_to(root)), sha256_file(path), precision, path.stat().st_size, **kinds)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "bytes": self.bytes, "sha256": self.sha256,
                               "precision": self.precision}  # fmt: skip
        for name in ("kept_fp32", "quantized_ops", "int8_weights", "int8_weight_bits", "build"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out

    @classmethod
    def from_dict(cls, f: Fields) -> FileRecord:
        path, digest, precision = (f.data.get(k) for k in ("path", "sha256", "precision"))
        if not isinstance(path, str) or not isinstance(digest, str) or not isinstance(precision, str):
            raise InputError(f"{f.where}: path, sha256 and precision must be strings; {FIX}")
        # a plain file name: an entry that points outside the export directory is refused, never followed
        if Path(path).name != path or path in ("", ".", ".."):
            raise InputError(f"{f.where}: path {path!r} is not a file name inside the export directory; refused")
        calibration = f.object("calibration", optional=True)
        return cls(
            path=path,
            sha256=digest,
            precision=precision,
            bytes=f.integer("bytes", optional=True) or 0,
            kept_fp32=f.strings("kept_fp32", optional=True),
            quantized_ops=f.strings("quantized_ops", optional=True),
            int8_weights=f.string("int8_weights", optional=True),
            int8_weight_bits=f.integer("int8_weight_bits", optional=True),
            calibration=CalibrationRecipe.from_dict(calibration) if calibration else None,
            build=f.raw_object("build", optional=True),
        )


@dataclass(frozen=True)
class ExportManifest:
    """`manifest.json`, typed. `source` is where it was read from (None: built by export)."""

    run_dir: str
    model: str
    num_classes: int
    class_names: list[str]
    ram: RAMConfig | None
    rad_seed_input: bool
    checkpoint: Checkpoint
    opset: int
    ir_version: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    static_size_reason: str | None
    harden_nodes: dict[str, int]
    precision: str
    onnx: list[FileRecord]
    engines: list[FileRecord]
    options: ExportOptions
    versions: dict[str, str | None]
    parity: dict[str, RecordedParity] | None  # None: exported with --no-parity
    engine_arithmetic: dict[str, ArithmeticVerdict] | None  # measured on the exporting machine's CPU
    source: Path | None = field(default=None, compare=False)

    # -- reading and writing --

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "run_dir": self.run_dir,
            "model": self.model,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "ram": self.ram.to_dict() if self.ram else None,
            "rad_seed_input": self.rad_seed_input,
            "checkpoint": dataclasses.asdict(self.checkpoint),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "static_size_reason": self.static_size_reason,
            "harden_nodes": self.harden_nodes,
            "precision": self.precision,
            "onnx": [r.to_dict() for r in self.onnx],
            "engines": [r.to_dict() for r in self.engines],
            "options": self.options.to_dict(),
            "versions": self.versions,
            "parity": {k: dataclasses.asdict(v) for k, v in self.parity.items()} if self.parity else None,
            "engine_arithmetic": (
                {k: v.to_dict() for k, v in self.engine_arithmetic.items()} if self.engine_arithmetic else None
            ),
        }

    @classmethod
    def read(cls, export_dir: Path) -> ExportManifest:
        """Read and validate `export_dir/manifest.json`; InputError (exit 2) names the field."""
        path = Path(export_dir) / MANIFEST_FILE
        return cls.from_dict(read_manifest(export_dir), path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> ExportManifest:
        f = Fields(data, str(source), FIX)
        if data.get("format") != FORMAT:
            raise InputError(f"{source}: not a {FORMAT} manifest; {FIX}")
        num_classes = f.integer("num_classes", low=2, high=100_000)
        class_names = f.strings("class_names")
        if len(class_names) != num_classes:
            raise f.bad("class_names", f"a list of {num_classes} strings")
        checkpoint = f.object("checkpoint")
        if checkpoint is None or not isinstance(checkpoint.data.get("sha256"), str):
            raise InputError(f"{source}: field 'checkpoint.sha256' is missing or not a string; {FIX}")
        ram = f.raw_object("ram", optional=True)
        options = f.raw_object("options")
        parity = f.object_map("parity", optional=True)
        arithmetic = f.object_map("engine_arithmetic", optional=True)
        return cls(
            run_dir=f.string("run_dir"),
            model=f.string("model"),
            num_classes=num_classes,
            class_names=class_names,
            ram=_ram(ram, source),
            rad_seed_input=f.boolean("rad_seed_input"),
            checkpoint=Checkpoint.from_dict(checkpoint),
            opset=f.integer("opset", low=1, high=1000),
            ir_version=f.integer("ir_version", low=1, high=1000),
            inputs=_shapes(f, "inputs"),
            outputs=_shapes(f, "outputs"),
            static_size_reason=f.string("static_size_reason", optional=True),
            harden_nodes=f.counts("harden_nodes", optional=True) or {},
            precision=f.string("precision"),
            onnx=[FileRecord.from_dict(r) for r in f.objects("onnx")],
            engines=[FileRecord.from_dict(r) for r in f.objects("engines")],
            options=ExportOptions.from_dict(options, f"{source}: options"),
            versions=_versions(f),
            parity={k: RecordedParity.from_dict(v) for k, v in parity.items()} if parity else None,
            engine_arithmetic=(
                {k: ArithmeticVerdict.from_dict(v) for k, v in arithmetic.items()} if arithmetic else None
            ),
            source=source,
        )

    # -- what verify asks of it --

    def recorded_agreement(self, precision: str) -> float | None:
        """The argmax agreement of the `precision` file with its PyTorch model that `harden export`
        measured (parity), or None when the export recorded none (--no-parity)."""
        recorded = (self.parity or {}).get(precision)
        return recorded.argmax_agreement if recorded else None

    @property
    def checkpoint_sha256(self) -> str:
        return self.checkpoint.sha256

    @property
    def files(self) -> list[FileRecord]:
        return [*self.onnx, *self.engines]

    def hashes(self) -> dict[str, str]:
        return {f.path: f.sha256 for f in self.files}

    def record(self, name: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == name), None)

    def calibration(self) -> CalibrationRecipe | None:
        """The int8 file's calibration recipe (None: no int8 variant)."""
        return next((r.calibration for r in self.onnx if r.calibration is not None), None)


def _ram(data: dict[str, Any] | None, source: Path) -> RAMConfig | None:
    if data is None:
        return None
    try:
        return RAMConfig.from_dict(data)
    except (InputError, TypeError) as err:
        raise InputError(f"{source}: field 'ram' is not a RAM configuration ({err}); {FIX}") from err


def _shapes(f: Fields, name: str) -> dict[str, list[int | str]]:
    """Input or output shapes: name → dimensions (an int, or a symbolic name)."""
    shapes = f.raw_object(name)
    for dims in shapes.values():
        if not isinstance(dims, list) or not all(isinstance(d, int | str) and not isinstance(d, bool) for d in dims):
            raise f.bad(name, "an object of shapes (lists of integers and names)")
    return shapes


def _versions(f: Fields) -> dict[str, str | None]:
    found = f.raw_object("versions")
    if not all(v is None or isinstance(v, str) for v in found.values()):
        raise f.bad("versions", "an object of version strings")
    return found


def read_manifest(export_dir: Path) -> dict[str, Any]:
    """The manifest's JSON object (typed reading: `ExportManifest.read`)."""
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        hint = "run `harden export RUN_DIR --out DIR`"
        raise InputError(f"{export_dir} is not a harden export (no {MANIFEST_FILE}); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); export again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} manifest; {FIX}")
    return manifest


def verify_files(export_dir: Path, manifest: ExportManifest | None = None) -> list[str]:
    """Recompute every recorded hash under `export_dir`; returns the files checked.

    Raises InputError naming the first file that is missing or changed since export.
    """
    manifest = manifest or ExportManifest.read(export_dir)
    checked = []
    for entry in manifest.files:
        path = Path(export_dir) / entry.path
        if not path.is_file():
            raise InputError(f"{path} is listed in the manifest but missing; export again")
        if sha256_file(path) != entry.sha256:
            raise InputError(
                f"{path} does not match the sha256 in {MANIFEST_FILE}: it changed since export; "
                "it is not the model that was checked, so it is refused. Export again."
            )
        checked.append(entry.path)
    return checked
