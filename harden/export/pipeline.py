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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harden._io import write_json
from harden.config import ModelConfig, TrainConfig
from harden.data import collate_pad, open_dataset
from harden.errors import InputError
from harden.export.arithmetic import ArithmeticVerdict, audit_file
from harden.export.files import sha256_file, versions
from harden.export.manifest import (
    MANIFEST_FILE,
    CalibrationRecipe,
    Checkpoint,
    ExportManifest,
    FileRecord,
    RecordedParity,
)
from harden.export.onnx_export import IMAGE, LOGITS, RAD_SEED, ExportResult, check_onnx, export_onnx
from harden.export.options import ExportOptions
from harden.export.parity import ParityReport, check_parity
from harden.export.precision import to_fp16, to_int8
from harden.export.trt_options import TrtBuildOptions
from harden.outputs import staging_prefix, sweep_stale_staging
from harden.ram import has_rad
from harden.ram.config import RAMConfig
from harden.run import MODEL_FILE, load_model, read_config

PARITY_FILE: Final = "parity.json"
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    files: list[Path]
    parity: dict[str, ParityReport]
    arithmetic: dict[str, ArithmeticVerdict]
    manifest: ExportManifest

    @property
    def passed(self) -> bool:
        return all(report.passed for report in self.parity.values())


@dataclass(frozen=True)
class _Plan:
    """What an export works from, all read and checked before anything is written."""

    run_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    model: nn.Module
    image_size: tuple[int, int]
    static_reason: str | None  # why the graph has a fixed input size (None: dynamic)
    with_rad: bool
    trt_build: TrtBuildOptions | None
    calibration: Batch | None  # int8 only
    parity_data: Batch | None  # unless --no-parity


@dataclass(frozen=True)
class _Variant:
    path: Path
    ops: list[str]  # fp16: ops kept in fp32; int8: quantised ops
    calibration: CalibrationRecipe | None = None


def export_run(run_dir: Path, out: Path, options: ExportOptions, say: Callable[[str], None] = print) -> ExportSummary:
    """Export the model of `run_dir` into `out` as `options` say; see the module docstring."""
    out = Path(out)
    plan = _plan(run_dir, out, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(out.parent, out.name)  # left by exports that were killed
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out.name), suffix=".staging", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes 0700; an export directory is meant to be shared
    try:
        ram = RAMConfig.from_dict(plan.model_config.ram) if plan.model_config.ram else None
        say(f"exporting {plan.model_config.name} ({ram.describe() if ram else 'no RAM'}) to ONNX ...")
        fp32 = export_onnx(plan.model, staging / "model.fp32.onnx", plan.image_size)
        variants = {"fp32": _Variant(fp32.path, []), **_precision_variant(plan, options, fp32.path, staging, say)}
        parity, arithmetic = _check(plan, variants, staging, say)
        engines = _engines(plan, options, variants, staging, say)
        manifest = _manifest(plan, options, fp32, ram, variants, engines, staging, parity, arithmetic)
        write_json(staging / MANIFEST_FILE, manifest.to_dict())
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p for p in out.iterdir() if p.is_file())
    return ExportSummary(out=out, files=files, parity=parity, arithmetic=arithmetic, manifest=manifest)


def _plan(run_dir: Path, out: Path, options: ExportOptions) -> _Plan:
    """Refuse what cannot work before any work; load the model and the images export needs."""
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
    trt_build = options.trt_build(image_size) if options.trt else None
    if trt_build is not None and static_reason is not None:
        trt_build.shapes.check_static(image_size)

    def images(data: str, split: str, count: int) -> Batch:
        found = _images(data, split, count, image_size, train_config.seed, model_config.num_classes)
        return _fit(*found, image_size) if static_reason is not None else found

    calibration = None
    if options.precision == "int8":
        calibration = images(options.calib_data or train_config.data, options.calib_split, options.calib_images)
    parity_data = images(train_config.data, "val", options.parity_images) if options.parity else None
    return _Plan(Path(run_dir), model_config, train_config, model, image_size, static_reason, has_rad(model),
                 trt_build, calibration, parity_data)  # fmt: skip


def _precision_variant(
    plan: _Plan, options: ExportOptions, fp32: Path, staging: Path, say: Callable[[str], None]
) -> dict[str, _Variant]:
    """The fp16 or int8 file derived from the fp32 one (none for fp32), checked by onnx's checker."""
    if options.precision == "fp32":
        return {}
    path = staging / f"model.{options.precision}.onnx"
    if options.precision == "fp16":
        say("making the fp16 variant ...")
        variant = _Variant(path, to_fp16(fp32, path))
    else:
        say(f"calibrating the int8 variant on {options.calib_images} images ({options.weight_range} weights) ...")
        assert plan.calibration is not None
        ops = to_int8(fp32, path, _one_by_one(plan.calibration[0]), plan.with_rad, options.weight_range)
        recipe = CalibrationRecipe(
            data=options.calib_data or plan.train_config.data,
            split=options.calib_split,
            images=options.calib_images,
            seed=plan.train_config.seed,
            image_size=plan.image_size,
            static=plan.static_reason is not None,
            num_classes=plan.model_config.num_classes,
            rad=plan.with_rad,
            weights=options.weight_range,
        )
        variant = _Variant(path, ops, recipe)
    check_onnx(path)  # export_onnx checked the fp32 file before keeping it
    return {options.precision: variant}


def _check(
    plan: _Plan, variants: dict[str, _Variant], staging: Path, say: Callable[[str], None]
) -> tuple[dict[str, ParityReport], dict[str, ArithmeticVerdict]]:
    """Parity of every file with the PyTorch model, then ONNX Runtime's arithmetic on this CPU
    against each file as written (nothing with --no-parity)."""
    parity: dict[str, ParityReport] = {}
    arithmetic: dict[str, ArithmeticVerdict] = {}
    if plan.parity_data is None:
        return parity, arithmetic
    images, labels = plan.parity_data
    classes = plan.model_config.num_classes
    for precision, variant in variants.items():
        say(f"parity {precision}: PyTorch vs ONNX Runtime on {images.shape[0]} images ...")
        parity[precision] = check_parity(plan.model, variant.path, images, labels, classes, precision=precision,
                                         with_rad=plan.with_rad)  # fmt: skip
    write_json(staging / PARITY_FILE, {k: v.to_dict() for k, v in parity.items()})
    for precision, variant in variants.items():
        arithmetic[precision] = _arithmetic(variant.path, precision, images, labels, classes, plan.with_rad, say)
    return parity, arithmetic


def _engines(
    plan: _Plan, options: ExportOptions, variants: dict[str, _Variant], staging: Path, say: Callable[[str], None]
) -> list[Path]:
    """The TensorRT engine built from the chosen variant (none without --trt)."""
    if plan.trt_build is None:
        return []
    from harden.export.tensorrt import build_engine

    source = variants[options.precision].path
    engine = staging / f"model.{options.precision}.engine"
    say(f"building the TensorRT engine from {source.name} ({plan.trt_build.shapes.describe()}) ...")
    return [build_engine(source, engine, plan.trt_build)]


def _manifest(
    plan: _Plan,
    options: ExportOptions,
    fp32: ExportResult,
    ram: RAMConfig | None,
    variants: dict[str, _Variant],
    engines: list[Path],
    staging: Path,
    parity: dict[str, ParityReport],
    arithmetic: dict[str, ArithmeticVerdict],
) -> ExportManifest:
    checkpoint = plan.run_dir / MODEL_FILE
    return ExportManifest(
        run_dir=str(plan.run_dir),
        model=plan.model_config.name,
        num_classes=plan.model_config.num_classes,
        class_names=plan.model_config.class_names,
        ram=ram,
        rad_seed_input=plan.with_rad,
        checkpoint=Checkpoint(str(checkpoint), sha256_file(checkpoint)),
        opset=fp32.opset,
        ir_version=fp32.ir_version,
        inputs=fp32.inputs,
        outputs=fp32.outputs,
        static_size_reason=plan.static_reason,
        harden_nodes=fp32.harden_nodes,
        precision=options.precision,
        onnx=[
            FileRecord.of(v.path, staging, precision, **_kept(precision, v, options.weight_range))
            for precision, v in variants.items()
        ],
        engines=[
            FileRecord.of(e, staging, options.precision, build=plan.trt_build.to_dict(e))
            for e in engines
            if plan.trt_build is not None
        ],
        options=options,
        versions=versions(),
        # the figures verify derives its clean-agreement gate for the source twin from
        parity={k: _recorded_parity(v) for k, v in parity.items()} or None,
        # measured on the exporting machine's CPU: a property of that engine, not of the files
        engine_arithmetic=arithmetic or None,
    )


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


def _kept(precision: str, variant: _Variant, weights: str) -> dict[str, Any]:
    if precision == "fp16":
        return {"kept_fp32": variant.ops}
    if precision == "int8":
        bits = 7 if weights == "reduced" else 8
        return {"quantized_ops": variant.ops, "int8_weights": weights, "int8_weight_bits": bits,
                "calibration": variant.calibration}  # fmt: skip
    return {}


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


def calibration_images(recipe: CalibrationRecipe) -> list[np.ndarray]:
    """The int8 calibration images an export used, from the recipe its manifest records (verify
    re-derives the quantisation from them, `harden.runtime.provenance`)."""
    images, labels = _images(recipe.data, recipe.split, recipe.images, recipe.image_size, recipe.seed,
                             recipe.num_classes)  # fmt: skip
    if recipe.static:
        images, labels = _fit(images, labels, recipe.image_size)
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


def _recorded_parity(report: ParityReport) -> RecordedParity:
    """What the manifest keeps of a parity check: the figures verify derives a gate from."""
    return RecordedParity(passed=report.passed, reasons=list(report.reasons), images=report.images,
                          argmax_agreement=report.argmax_agreement, miou_change=report.miou_change,
                          max_abs_diff=report.max_abs_diff)  # fmt: skip
