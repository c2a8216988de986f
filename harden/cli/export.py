"""`harden export`: a trained run → ONNX (and a TensorRT engine), checked for parity."""

from __future__ import annotations

from pathlib import Path

import click

from harden.cli._options import SIZE, Command


@click.command("export", cls=Command, renamed={"--force": "--overwrite"})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export directory (must not exist).")
@click.option("--trt", is_flag=True, help="Also build a TensorRT engine from the chosen precision (needs TensorRT).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Variant to write besides model.fp32.onnx: fp16 (attention kept fp32) or int8 (Q/DQ, calibrated).",
)
@click.option("--calib-data", default=None, metavar="SPEC", help="int8 calibration images. [default: the run's data]")
@click.option("--calib-split", default="train", show_default=True, help="Split of --calib-data.")
@click.option("--calib-images", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--int8-weights",
    type=click.Choice(["reduced", "full"]),
    default=None,
    help="int8 weight range: reduced = 7-bit, computed exactly by ONNX Runtime on every x86-64 CPU (its int8 "
    "kernels saturate 8-bit weights on CPUs without VNNI); full = 8-bit, for TensorRT and VNNI CPUs. "
    "[default: full with --trt, else reduced]",
)
@click.option("--parity-images", type=click.IntRange(min=1), default=8, show_default=True, help="Val images.")
@click.option("--no-parity", is_flag=True, help="Skip the PyTorch vs ONNX Runtime parity check (not recommended).")
@click.option(
    "--image-size", type=SIZE, default=None, help="Trace size; the fixed size of static models. [default: the run's]"
)
@click.option(
    "--trt-shapes",
    default=None,
    metavar="min=HxW,opt=HxW,max=HxW",
    help="TensorRT optimisation profile of the image input (trtexec's --minShapes/--optShapes/--maxShapes); the "
    "engine accepts only sizes inside it. A missing key takes opt. [default: the run's image size for all three]",
)
@click.option(
    "--trt-batch",
    type=click.Tuple([int, int, int]),
    default=None,
    metavar="MIN OPT MAX",
    help="Batch sizes of the profile. [default: 1 1 8]",
)
@click.option(
    "--trt-workspace",
    default=None,
    metavar="SIZE",
    help="Builder workspace limit, e.g. 4GiB or 512MiB (trtexec's --memPoolSize=workspace). [default: TensorRT's]",
)
@click.option(
    "--trt-timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Timing cache file, read before and written after the build; share it between builds on one GPU model "
    "to build faster and pick the same kernels. [default: model.<precision>.engine.timing.cache in OUT]",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing export directory (a harden export only).")
def export_command(
    run_dir: Path,
    out: Path,
    trt: bool,
    precision: str,
    calib_data: str | None,
    calib_split: str,
    calib_images: int,
    int8_weights: str | None,
    parity_images: int,
    no_parity: bool,
    image_size: tuple[int, int] | None,
    trt_shapes: str | None,
    trt_batch: tuple[int, int, int] | None,
    trt_workspace: str | None,
    trt_timing_cache: Path | None,
    overwrite: bool,
) -> None:
    """Export the model of RUN_DIR to ONNX, check it against PyTorch, and optionally build an engine.

    MAS and RAD become nodes of the `harden` ONNX domain with function bodies of standard ops,
    so ONNX Runtime runs the file with no extra library and TensorRT can map them to plugins.
    With RAD the graph takes an int64 input `rad_seed`: feed a fresh value per frame in
    deployment, fixed ones for validation (same seed, same output as PyTorch). Batch, height and
    width are dynamic (PSPNet and Swin fix H and W: the manifest says why).

    After export, every ONNX file is compared with the PyTorch model on validation images
    through Polygraphy (logits, argmax agreement, mIoU change), with ONNX Runtime running the
    file as written; a failed comparison exits 1 unless --no-parity. The engine-arithmetic
    check then runs ONNX Runtime's optimised kernels on this CPU against the same file as
    written and, when they differ (int8 on x86-64 without VNNI), names the cause and the remedy.
    OUT gets model.fp32.onnx, the chosen variant, parity.json and manifest.json (sha256 of every
    file, versions, shapes, options, int8 weight range, engine arithmetic on this machine).

    \b
    Examples:
      harden export runs/demo --out exports/demo
      harden export runs/demo --out exports/demo-int8 --precision int8 --calib-images 64
      harden export runs/demo --out exports/demo-trt --precision fp16 --trt   # on a GPU machine
      harden export runs/psp --out exports/psp-trt --precision int8 --trt \\
          --trt-shapes min=512x1024,opt=1024x2048,max=1024x2048 --trt-batch 1 1 4 --trt-workspace 8GiB
    """
    from harden.cli._exits import Failed
    from harden.export.options import ExportOptions
    from harden.export.pipeline import export_run

    options = ExportOptions(
        precision=precision,
        trt=trt,
        parity=not no_parity,
        parity_images=parity_images,
        image_size=image_size,
        calib_data=calib_data,
        calib_split=calib_split,
        calib_images=calib_images,
        int8_weights=int8_weights,
        trt_shapes=trt_shapes,
        trt_batch=trt_batch,
        trt_workspace=trt_workspace,
        trt_timing_cache=trt_timing_cache,
        overwrite=overwrite,
    )
    summary = export_run(run_dir, out, options, say=lambda line: click.echo(line, err=True))
    for precision_name, report in summary.parity.items():
        verdict = "pass" if report.passed else "FAIL: " + "; ".join(report.reasons)
        click.echo(
            f"parity {precision_name:<5} max|Δ| {report.max_abs_diff:.2e}  "
            f"argmax agreement {report.argmax_agreement:.4%}  "
            f"mIoU {report.miou_reference:.4f} → {report.miou_onnx:.4f}  {verdict}"
        )
    for precision_name, arithmetic in summary.arithmetic.items():
        state = "pass" if arithmetic.passed else "DIFFERS (not a parity failure; see the remedy above)"
        click.echo(
            f"engine arithmetic {precision_name:<5} ONNX Runtime on this CPU vs the file as written: "
            f"agreement {arithmetic.comparison.argmax_agreement:.4%}  "
            f"max|Δ| {arithmetic.comparison.max_abs_diff:.2e}  {state}"
        )
    click.echo("wrote " + ", ".join(str(p) for p in summary.files))
    if not summary.passed:
        raise Failed("the exported model does not match PyTorch (see parity above and parity.json)")
