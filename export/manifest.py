"""`manifest.json`: what an export directory holds, so verification can trust what it loads.

The manifest records the sha256 of the checkpoint, every ONNX file and every engine, the
versions that produced them, the opset, precision, RAM settings, input shapes, export options
and parity results. `verify_files` recomputes the hashes: a twin or engine whose file does not
match its manifest is refused, because it is not what was exported and checked.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import onnx

from harden import DISTRIBUTION
from harden.errors import InputError

MANIFEST_FILE: Final = "manifest.json"
FORMAT: Final = "harden-export-manifest-v1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    """Versions of everything that shaped the exported files (None: not installed)."""
    found: dict[str, str | None] = {}
    for package in ("harden", "torch", "onnx", "onnxscript", "onnxruntime", "polygraphy", "tensorrt"):
        try:
            found[package] = importlib.metadata.version(DISTRIBUTION if package == "harden" else package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def file_entry(path: Path, root: Path, **extra: Any) -> dict[str, Any]:
    """A manifest entry for a file under `root`: relative path, size, sha256, and `extra`."""
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        hint = "run `harden export RUN_DIR --out DIR`"
        raise InputError(f"{export_dir} is not a harden export (no {MANIFEST_FILE}); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); export again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} manifest; export again with this harden")
    return manifest


def verify_files(export_dir: Path, manifest: Manifest | None = None) -> list[str]:
    """Recompute every recorded hash under `export_dir`; returns the files checked.

    Raises InputError naming the first file that is missing or changed since export.
    """
    manifest = manifest or Manifest.read(export_dir)
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


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file whose external data, if any, stays inside the file's directory.

    ONNX external data is a path written in the file; a crafted path (`../../etc/...` or an
    absolute one) would make the loader read any file the process can read.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError, and OSError
        raise InputError(f"{path}: not a readable ONNX file ({err})") from err
    root = path.parent.resolve()
    for tensor in _tensors_with_external_data(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise InputError(
                f"{path}: tensor {tensor.name!r} stores its data at {location!r}, outside {root}; "
                "refused (external data must sit beside the ONNX file)"
            )
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
    if any(True for _ in _tensors_with_external_data(model)):
        try:
            onnx.load_external_data_for_model(model, str(root))
        except Exception as err:  # a truncated data file: onnx raises ValueError, OSError or its own errors
            raise InputError(f"{path}: its external data cannot be read ({err}); re-export or restore it") from err
    return model


def _tensors_with_external_data(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import uses_external_data

    return [t for t in _all_tensors(model.graph) if uses_external_data(t)]


def _all_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and tensor attributes of `graph` and its subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                tensors.append(attribute.t)
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                tensors.extend(_all_tensors(subgraph))
    return tensors


# -- the typed manifest: every field read from disk checked once, with the file and field named --


@dataclass(frozen=True)
class FileRecord:
    """One exported file: its path inside the export directory, size, sha256 and precision, plus
    what its kind records (int8: calibration recipe and weight range; engines: build options)."""

    path: str
    sha256: str
    precision: str
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> dict[str, Any] | None:
        recipe = self.extra.get("calibration")
        return recipe if isinstance(recipe, dict) else None


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` as read by verify: typed and validated (`Manifest.read`), so the code that
    uses it never meets a missing key or a wrong type. The JSON also carries what only people
    read (options, versions, parity, engine arithmetic at export); `raw` keeps all of it."""

    source: Path
    run_dir: str
    model: str
    num_classes: int
    class_names: list[str]
    ram: dict[str, Any] | None
    checkpoint_sha256: str
    precision: str
    harden_nodes: dict[str, int]
    onnx: list[FileRecord]
    engines: list[FileRecord]
    raw: dict[str, Any]

    @classmethod
    def read(cls, export_dir: Path) -> Manifest:
        """Read and validate `export_dir/manifest.json`; InputError (exit 2) names the field."""
        raw = read_manifest(export_dir)
        return cls.from_dict(raw, Path(export_dir) / MANIFEST_FILE)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path) -> Manifest:
        def bad(name: str, expected: str) -> InputError:
            return InputError(f"{source}: field {name!r} must be {expected}, got {raw.get(name)!r:.80}; export again")

        def field_of(name: str, kind: type | tuple[type, ...], expected: str, optional: bool = False) -> Any:
            value = raw.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise bad(name, expected)
            return value

        num_classes = field_of("num_classes", int, "an integer ≥ 2")
        if not 2 <= num_classes <= 100_000:
            raise bad("num_classes", "an integer between 2 and 100000")
        class_names = field_of("class_names", list, "a list of names")
        if len(class_names) != num_classes or not all(isinstance(n, str) for n in class_names):
            raise bad("class_names", f"a list of {num_classes} strings")
        checkpoint = field_of("checkpoint", dict, "an object with path and sha256")
        if not isinstance(checkpoint.get("sha256"), str):
            raise InputError(f"{source}: field 'checkpoint.sha256' is missing or not a string; export again")
        nodes = field_of("harden_nodes", dict, "an object of op counts", optional=True) or {}
        if not all(isinstance(v, int) for v in nodes.values()):
            raise bad("harden_nodes", "an object of op counts")
        return cls(
            source=source,
            run_dir=field_of("run_dir", str, "a path"),
            model=field_of("model", str, "a model name"),
            num_classes=num_classes,
            class_names=class_names,
            ram=field_of("ram", dict, "an object of RAM settings", optional=True),
            checkpoint_sha256=checkpoint["sha256"],
            precision=field_of("precision", str, "fp32, fp16 or int8"),
            harden_nodes=nodes,
            onnx=_records(raw, "onnx", source),
            engines=_records(raw, "engines", source),
            raw=raw,
        )

    def recorded_agreement(self, precision: str) -> float | None:
        """The argmax agreement of the `precision` file with its PyTorch model that `harden export`
        measured (parity), or None when the export recorded none (--no-parity, an older export)."""
        parity = self.raw.get("parity")
        entry = parity.get(precision) if isinstance(parity, dict) else None
        value = entry.get("argmax_agreement") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            return None
        return float(value)

    @property
    def files(self) -> list[FileRecord]:
        return [*self.onnx, *self.engines]

    def hashes(self) -> dict[str, str]:
        return {f.path: f.sha256 for f in self.files}

    def record(self, name: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == name), None)


def _records(raw: dict[str, Any], key: str, source: Path) -> list[FileRecord]:
    entries = raw.get(key, [])
    if not isinstance(entries, list):
        raise InputError(f"{source}: field {key!r} must be a list of file entries; export again")
    records = []
    for i, entry in enumerate(entries):
        where = f"{source}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where} must be an object with path, sha256 and precision; export again")
        path, digest, precision = entry.get("path"), entry.get("sha256"), entry.get("precision")
        if not isinstance(path, str) or not isinstance(digest, str) or not isinstance(precision, str):
            raise InputError(f"{where}: path, sha256 and precision must be strings; export again")
        # a plain file name: an entry that points outside the export directory is refused, never followed
        if Path(path).name != path or path in ("", ".", ".."):
            raise InputError(f"{where}: path {path!r} is not a file name inside the export directory; refused")
        size = entry.get("bytes", 0)
        extra = {k: v for k, v in entry.items() if k not in ("path", "sha256", "precision", "bytes")}
        records.append(FileRecord(path, digest, precision, size if isinstance(size, int) else 0, extra))
    return records
