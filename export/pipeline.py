"""`harden export`: a trained run → ONNX (fp32 and a precision variant) → engine, with parity.

Everything is written into a staging directory beside `--out` and renamed into place at the
end, so an interrupted or refused export leaves nothing half-written (and `--overwrite` replaces
an old export only once the new one is complete). Layout of an export directory:

    model.fp32.onnx          always: the graph every variant and engine derives from
    model.fp16.onnx          with --precision fp16 (model.int8.onnx with int8)
    model.<precision>.engine with --trt
    parity.json              one report per ONNX file (unless --no-parity)
    manifest.json            hashes, versions, shapes, options, parity (written last)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F

from harden._io import write_json
from harden.data import collate_pad, open_dataset
from harden.errors import InputError
from harden.export.arithmetic import ArithmeticVerdict, audit_file
from harden.export.manifest import FORMAT, MANIFEST_FILE, file_entry, sha256_file, versions
from harden.export.onnx_export import IMAGE, LOGITS, RAD_SEED, check_onnx, export_onnx
from harden.export.parity import ParityReport, check_parity
from harden.export.precision import INT8_WEIGHTS, PRECISIONS, to_fp16, to_int8
from harden.export.trt_options import TrtBuildOptions, TrtShapes, parse_bytes, parse_shapes, shapes_from
from harden.outputs import staging_prefix, sweep_stale_staging
from harden.ram import has_rad
from harden.run import MODEL_FILE, load_model, read_config

PARITY_FILE: Final = "parity.json"


@dataclass(frozen=True)
class ExportOptions:
    """Args:
    precision: "fp32", "fp16" or "int8" (the fp32 file is always written too).
    trt: also build a TensorRT engine from the chosen variant.
    parity: compare every ONNX file with the PyTorch model after export.
    parity_images: dataset images in the parity check.
    image_size: (H, W) of the tracing example and of the graph for static-size models;
        None: the run's training image size.
    calib_data, calib_split, calib_images: int8 calibration images (data None: the run's data).
    int8_weights: "reduced" (7-bit: exact in ONNX Runtime on every x86-64 CPU) or "full"
        (8-bit: TensorRT, VNNI CPUs); None: "full" with --trt, else "reduced".
    trt_shapes: the engine's profile, `min=HxW,opt=HxW,max=HxW` (None: the image size for all).
    trt_batch: (min, opt, max) batch of the profile (None: 1, 1, 8).
    trt_workspace: the builder's workspace limit, e.g. "4GiB" (None: TensorRT's default).
    trt_timing_cache: the timing cache file (None: beside the engine).
    overwrite: replace an existing output directory (a harden export only).
    """

    precision: str = "fp32"
    trt: bool = False
    parity: bool = True
    parity_images: int = 8
    image_size: tuple[int, int] | None = None
    calib_data: str | None = None
    calib_split: str = "train"
    calib_images: int = 32
    int8_weights: str | None = None
    trt_shapes: str | None = None
    trt_batch: tuple[int, int, int] | None = None
    trt_workspace: str | None = None
    trt_timing_cache: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.parity_images < 1 or self.calib_images < 1:
            raise InputError("--parity-images and --calib-images must be at least 1")
        if self.int8_weights is not None and self.int8_weights not in INT8_WEIGHTS:
            raise InputError(f"--int8-weights must be one of {', '.join(INT8_WEIGHTS)}, got {self.int8_weights!r}")

        given = [name for name in ("trt_shapes", "trt_batch", "trt_workspace", "trt_timing_cache")
                 if getattr(self, name) is not None]  # fmt: skip
        if given and not self.trt:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise InputError(f"{flags} configure the TensorRT engine: add --trt, or leave them out")
        if self.trt_shapes is not None:  # refused before any work, with or without TensorRT
            sizes = parse_shapes(self.trt_shapes)
            shapes_from(self.trt_shapes, next(iter(sizes.values())), self.trt_batch)
        if self.trt_workspace is not None:
            parse_bytes(self.trt_workspace)
        if self.trt_batch is not None:
            TrtShapes.at((1, 1), self.trt_batch)

    def trt_build(self, image_size: tuple[int, int]) -> TrtBuildOptions:
        """The engine's build options; the profile defaults to `image_size` (the run's)."""
        return TrtBuildOptions(
            shapes=shapes_from(self.trt_shapes, image_size, self.trt_batch),
            workspace_bytes=parse_bytes(self.trt_workspace) if self.trt_workspace else None,
            timing_cache=self.trt_timing_cache,
        )

    @property
    def weight_range(self) -> str:
        """The int8 weight range: the stated one, else what the target engine computes exactly."""
        return self.int8_weights or ("full" if self.trt else "reduced")


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    files: list[Path]
    parity: dict[str, ParityReport]
    arithmetic: dict[str, ArithmeticVerdict]

    @property
    def passed(self) -> bool:
        return all(report.passed for report in self.parity.values())


def export_run(run_dir: Path, out: Path, options: ExportOptions, say: Callable[[str], None] = print) -> ExportSummary:
    """Export the model of `run_dir` into `out` as `options` say; see the module docstring."""
    out = Path(out)
    if out.exists() and not options.overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    if out.exists() and not (out / MANIFEST_FILE).is_file():
        raise InputError(f"{out} exists and is not a harden export; --overwrite only replaces harden exports")
    if options.trt:
        from harden.export.tensorrt import require_tensorrt

        require_tensorrt()  # before any work: says what to install and where it runs
    model_config, train_config = read_config(run_dir)
    model, _ = load_model(run_dir)
    image_size = options.image_size or train_config.image_size
    static_reason = getattr(model, "export_static_size", None)
    height, width = image_size
    trt_build = options.trt_build((height, width)) if options.trt else None
    if trt_build is not None and static_reason is not None:
        trt_build.shapes.check_static((height, width))
    with_rad = has_rad(model)
    calibration = None
    if options.precision == "int8":
        calibration = _images(options.calib_data or train_config.data, options.calib_split, options.calib_images,
                              image_size, train_config.seed, model_config.num_classes)  # fmt: skip
        if static_reason is not None:
            calibration = _fit(*calibration, image_size)
    parity_data = None
    if options.parity:
        parity_data = _images(train_config.data, "val", options.parity_images, image_size, train_config.seed,
                              model_config.num_classes)  # fmt: skip
        if static_reason is not None:
            parity_data = _fit(*parity_data, image_size)

    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(out.parent, out.name)  # left by exports that were killed
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out.name), suffix=".staging", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes 0700; an export directory is meant to be shared
    try:
        say(f"exporting {model_config.name} ({_ram_text(model_config.ram)}) to ONNX ...")
        fp32 = export_onnx(model, staging / "model.fp32.onnx", image_size)
        variants: dict[str, tuple[Path, list[str]]] = {"fp32": (fp32.path, [])}
        recipe: dict[str, Any] = {}  # how the int8 variant was calibrated, for verify to re-derive it
        if options.precision == "fp16":
            say("making the fp16 variant ...")
            path = staging / "model.fp16.onnx"
            variants["fp16"] = (path, to_fp16(fp32.path, path))
        elif options.precision == "int8":
            say(f"calibrating the int8 variant on {options.calib_images} images ({options.weight_range} weights) ...")
            path = staging / "model.int8.onnx"
            assert calibration is not None
            quantized = to_int8(fp32.path, path, _one_by_one(calibration[0]), with_rad, options.weight_range)
            variants["int8"] = (path, quantized)
            recipe = {
                "data": options.calib_data or train_config.data, "split": options.calib_split,
                "images": options.calib_images, "seed": train_config.seed, "image_size": list(image_size),
                "static": static_reason is not None, "num_classes": model_config.num_classes, "rad": with_rad,
                "weights": options.weight_range, "method": "minmax", "symmetric": True, "per_channel": True,
            }  # fmt: skip
        for precision, (path, _) in variants.items():
            if precision != "fp32":  # export_onnx checked the fp32 file before keeping it
                check_onnx(path)

        parity: dict[str, ParityReport] = {}
        arithmetic: dict[str, ArithmeticVerdict] = {}
        if parity_data is not None:
            images, labels = parity_data
            for precision, (path, _) in variants.items():
                say(f"parity {precision}: PyTorch vs ONNX Runtime on {images.shape[0]} images ...")
                parity[precision] = check_parity(model, path, images, labels, model_config.num_classes,
                                                 precision=precision, with_rad=with_rad)  # fmt: skip
            write_json(staging / PARITY_FILE, {k: v.to_dict() for k, v in parity.items()})
            for precision, (path, _) in variants.items():
                arithmetic[precision] = _arithmetic(path, precision, images, labels, model_config.num_classes,
                                                    with_rad, say)  # fmt: skip

        engines = []
        if options.trt:
            from harden.export.tensorrt import build_engine

            source = variants[options.precision][0]
            engine = staging / f"model.{options.precision}.engine"
            assert trt_build is not None
            say(f"building the TensorRT engine from {source.name} ({trt_build.shapes.describe()}) ...")
            engines.append(build_engine(source, engine, trt_build))

        manifest = {
            "format": FORMAT,
            "run_dir": str(run_dir),
            "model": model_config.name,
            "num_classes": model_config.num_classes,
            "class_names": model_config.class_names,
            "ram": model_config.ram,
            "rad_seed_input": with_rad,
            "checkpoint": {"path": str(Path(run_dir) / MODEL_FILE), "sha256": sha256_file(Path(run_dir) / MODEL_FILE)},
            "opset": fp32.opset,
            "ir_version": fp32.ir_version,
            "inputs": fp32.inputs,
            "outputs": fp32.outputs,
            "static_size_reason": static_reason,
            "harden_nodes": fp32.harden_nodes,
            "precision": options.precision,
            "onnx": [
                file_entry(
                    path,
                    staging,
                    precision=precision,
                    **_kept(precision, ops, options.weight_range),
                    **({"calibration": recipe} if precision == "int8" else {}),
                )
                for precision, (path, ops) in variants.items()
            ],
            "engines": [
                file_entry(e, staging, precision=options.precision, build=trt_build.to_dict(e))
                for e in engines
                if trt_build is not None
            ],
            "options": {k: _json_value(v) for k, v in asdict(options).items()},
            "versions": versions(),
            # the figures verify derives its clean-agreement gate for the source twin from
            "parity": {k: _recorded_parity(v) for k, v in parity.items()} or None,
            # measured on the exporting machine's CPU: a property of that engine, not of the files
            "engine_arithmetic": {k: v.to_dict() for k, v in arithmetic.items()} or None,
        }
        write_json(staging / MANIFEST_FILE, manifest)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p for p in out.iterdir() if p.is_file())
    return ExportSummary(out=out, files=files, parity=parity, arithmetic=arithmetic)


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _arithmetic(
    path: Path,
    precision: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    with_rad: bool,
    say: Callable[[str], None],
) -> ArithmeticVerdict:
    """ONNX Runtime's kernels on this CPU vs the file as written; says the remedy when they differ."""
    feeds = []
    for i in range(images.shape[0]):
        feed = {IMAGE: images[i : i + 1].numpy().astype(np.float32)}
        if with_rad:
            feed[RAD_SEED] = np.array(i, dtype=np.int64)
        feeds.append(feed)
    verdict = audit_file(path, precision, feeds, labels.numpy(), num_classes, LOGITS)
    if not verdict.passed:
        say(f"warning: engine arithmetic {precision}: {verdict.detail()}")
    return verdict


def _kept(precision: str, ops: list[str], weights: str) -> dict[str, Any]:
    if precision == "fp16":
        return {"kept_fp32": ops}
    if precision == "int8":
        bits = 7 if weights == "reduced" else 8
        return {"quantized_ops": ops, "int8_weights": weights, "int8_weight_bits": bits}
    return {}


def _ram_text(ram: dict[str, Any] | None) -> str:
    if not ram:
        return "no RAM"
    parts = [f"MAS T={ram['threshold']:g}"] if ram.get("mas") else []
    parts += [f"RAD p={ram['drop_p']:g}"] if ram.get("rad") else []
    return " + ".join(parts) or "RAM identity"


def _images(
    data: str, split: str, count: int, size: tuple[int, int], seed: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset(data, split, size=size, num_images=count, seed=seed)
    if dataset.num_classes != num_classes:
        raise InputError(f"{data} has {dataset.num_classes} classes but the model predicts {num_classes}")
    if len(dataset) == 0:
        raise InputError(f"{data} has no {split} images")
    return collate_pad([dataset[i] for i in range(min(count, len(dataset)))])


def _fit(images: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to the fixed size of a static-size graph (labels by nearest neighbour)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images, labels
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return images, labels


def calibration_images(recipe: dict[str, Any]) -> list[np.ndarray]:
    """The int8 calibration images an export used, from the recipe its manifest records (verify
    re-derives the quantisation from them, `harden.runtime.provenance`)."""
    try:
        size = (int(recipe["image_size"][0]), int(recipe["image_size"][1]))
        data, split, count = str(recipe["data"]), str(recipe["split"]), int(recipe["images"])
        seed, num_classes = int(recipe["seed"]), int(recipe["num_classes"])
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"the manifest's calibration recipe is malformed ({err!r}); export again") from err
    images, labels = _images(data, split, count, size, seed, num_classes)
    if recipe.get("static"):
        images, labels = _fit(images, labels, size)
    return list(_one_by_one(images))


def _one_by_one(images: torch.Tensor) -> Iterator[np.ndarray]:
    for i in range(images.shape[0]):
        yield images[i : i + 1].numpy().astype(np.float32)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to `out`, replacing an old export last."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _recorded_parity(report: ParityReport) -> dict[str, Any]:
    """What the manifest keeps of a parity check: the figures verify derives a gate from."""
    return {"passed": report.passed, "reasons": report.reasons, "images": report.images,
            "argmax_agreement": report.argmax_agreement, "miou_change": report.miou_change,
            "max_abs_diff": report.max_abs_diff}  # fmt: skip
