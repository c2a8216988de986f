"""`harden eval`: clean mIoU, pixel accuracy and per-class IoU of a trained run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.cli._options import SIZE, Command, data_option, device_option, out_option, progress_option, resolve_device

if TYPE_CHECKING:
    from harden.data import SegmentationDataset
    from harden.models import SegmentationModel


EVAL_SCHEMA = "harden-eval-report-v1"


def _deprecated_json(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        click.echo("harden eval: --json FILE is deprecated and goes in the next release; write --out DIR "
                   "(DIR/eval.json)", err=True)  # fmt: skip
    return value


@click.command("eval", cls=Command)
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option(default=None)
@click.option("--split", default="val", show_default=True)
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@click.option("--images", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@out_option("Where to write eval.json and examples.png. [default: RUN_DIR]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True,
              callback=_deprecated_json)  # fmt: skip
@click.option("--examples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Panels (image, ground truth, prediction) of the first N images in OUT/examples.png.")  # fmt: skip
@click.option("--rad-seed", type=int, default=0, show_default=True,
              help="For models with RAD (random at evaluation): the seed of the evaluated draw.")  # fmt: skip
@device_option
@progress_option
def eval_command(
    run_dir: Path, data: str | None, split: str, image_size: tuple[int, int] | None, images: int | None,
    batch_size: int, out: Path | None, json_path: Path | None, examples: int, rad_seed: int, device: str,
    progress: bool,
) -> None:  # fmt: skip
    """Evaluate the model of RUN_DIR on clean images.

    Prints a per-class IoU table with mIoU and pixel accuracy, computed from one confusion
    matrix over the whole split, and writes them to OUT/eval.json. --data defaults to the run's
    dataset. A model with RAD is random at evaluation: the result is the draw of --rad-seed.
    """
    from harden._io import write_json
    from harden.evaluation import evaluate
    from harden.memory import require_model_fits
    from harden.outputs import report_file
    from harden.ram import fixed_rad_seed, has_rad
    from harden.run import open_run

    out = out or run_dir
    json_path = json_path or out / "eval.json"
    report_file(json_path, EVAL_SCHEMA, "eval.json")  # before any work: never overwrite what harden did not write
    device = resolve_device(device)
    run = open_run(run_dir, device, data=data, split=split, image_size=image_size, images=images)
    height, width = run.dataset[0][0].shape[-2:]
    require_model_fits({"model": run.model}, batch_size, height, width, what="evaluating the model", backward=False,
                       classes=run.model_config.num_classes, device=device)  # fmt: skip
    with fixed_rad_seed(run.model, rad_seed):
        confusion = evaluate(run.model, run.dataset, batch_size=batch_size, device=device,
                             progress=progress and sys.stderr.isatty())  # fmt: skip
    ram: dict[str, Any] = (
        {"ram": run.model_config.ram, "rad_seed": rad_seed} if run.model_config.ram is not None else {}
    )
    summary = {"run_dir": str(run_dir), "model": run.model_config.name, "data": run.data, "split": split,
               "images": len(run.dataset), **ram, **confusion.summary(run.dataset.class_names)}  # fmt: skip
    click.echo(format_table(summary))
    if has_rad(run.model):
        click.echo(f"RAD is active at evaluation: this is the draw of --rad-seed {rad_seed}")
    write_json(json_path, {"schema": EVAL_SCHEMA, **summary})
    click.echo(f"wrote {json_path}")
    if examples:
        with fixed_rad_seed(run.model, rad_seed):
            _save_examples(run.model, run.dataset, examples, device, out / "examples.png")
        click.echo(f"wrote {out / 'examples.png'}")


def _save_examples(model: SegmentationModel, dataset: SegmentationDataset, count: int, device: str, path: Path) -> None:
    import torch

    from harden.data import collate_pad
    from harden.visualize import palette_for, save_examples

    images, labels = collate_pad([dataset[i] for i in range(min(count, len(dataset)))])
    with torch.inference_mode():
        predictions = model(images.to(device)).argmax(1).cpu()
    save_examples(images, labels, predictions, path, palette_for(dataset.name, dataset.num_classes),
                  dataset.class_names)  # fmt: skip


def format_table(summary: dict) -> str:
    lines = [
        f"{summary['model']} on {summary['data']} ({summary['split']}, {summary['images']} images)",
        f"{'class':<16} {'IoU':>7}",
    ]
    for name, iou in summary["per_class_iou"].items():
        lines.append(f"{name:<16} {'—' if iou is None else f'{iou:.4f}':>7}")
    lines.append(f"{'mIoU':<16} {summary['miou']:>7.4f}")
    lines.append(f"{'pixel accuracy':<16} {summary['pixel_accuracy']:>7.4f}")
    return "\n".join(lines)
