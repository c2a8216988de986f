"""`harden eval`: clean mIoU, pixel accuracy and per-class IoU of a trained run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from harden.cli._options import SIZE, data_option, device_option, progress_option, resolve_device

if TYPE_CHECKING:
    from harden.data import SegmentationDataset
    from harden.models import SegmentationModel


EVAL_SCHEMA = "harden-eval-report-v1"


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option(default=None)
@click.option("--split", default="val", show_default=True)
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@click.option("--images", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the results. [default: RUN_DIR/eval.json]",
)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Save image | ground truth | prediction panels of the first N images to RUN_DIR/examples.png.",
)
@click.option(
    "--rad-seed",
    type=int,
    default=0,
    show_default=True,
    help="For models with RAD (random at evaluation): the seed of the evaluated draw.",
)
@device_option
@progress_option
def eval_command(
    run_dir: Path,
    data: str | None,
    split: str,
    image_size: tuple[int, int] | None,
    images: int | None,
    batch_size: int,
    json_path: Path | None,
    examples: int,
    rad_seed: int,
    device: str,
    progress: bool,
) -> None:
    """Evaluate the model of RUN_DIR on clean images.

    Prints a per-class IoU table with mIoU and pixel accuracy, computed from one confusion
    matrix over the whole split, and writes them as JSON. --data defaults to the run's dataset.
    A model with RAD is random at evaluation: the result is the draw of --rad-seed.
    """
    from harden._io import write_json
    from harden.data import open_dataset
    from harden.errors import InputError
    from harden.outputs import report_file
    from harden.ram import RAMConfig, fixed_rad_seed
    from harden.run import load_model, read_config
    from harden.training import evaluate

    if json_path is not None:  # checked before any work: never overwrite what harden did not write here
        report_file(json_path, EVAL_SCHEMA, "eval.json")
    model_config, train_config = read_config(run_dir)
    device = resolve_device(device)
    model, _ = load_model(run_dir, device)
    data = data or train_config.data
    size = image_size or train_config.image_size
    seed = train_config.seed
    dataset = open_dataset(data, split, size=size, num_images=images or train_config.val_images, seed=seed)
    if dataset.num_classes != model_config.num_classes:
        raise InputError(
            f"{data} has {dataset.num_classes} classes but the model predicts "
            f"{model_config.num_classes}; evaluate on the dataset it was trained for"
        )
    has_rad = model_config.ram is not None and RAMConfig.from_dict(model_config.ram).rad
    with fixed_rad_seed(model, rad_seed):
        confusion = evaluate(
            model, dataset, batch_size=batch_size, device=device, progress=progress and sys.stderr.isatty()
        )
    summary = {
        "run_dir": str(run_dir),
        "model": model_config.name,
        "data": data,
        "split": split,
        "images": len(dataset),
        **({"ram": model_config.ram, "rad_seed": rad_seed} if model_config.ram is not None else {}),
        **confusion.summary(dataset.class_names),
    }
    click.echo(format_table(summary))
    if has_rad:
        click.echo(f"RAD is active at evaluation: this is the draw of --rad-seed {rad_seed}")
    out = json_path or run_dir / "eval.json"
    write_json(out, {"schema": EVAL_SCHEMA, **summary})
    click.echo(f"wrote {out}")
    if examples:
        with fixed_rad_seed(model, rad_seed):
            _save_examples(model, dataset, examples, device, run_dir / "examples.png")
        click.echo(f"wrote {run_dir / 'examples.png'}")


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
