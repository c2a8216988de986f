"""`harden erf`: the effective receptive field of a trained run (RAM paper §3.1, Table 1)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from harden.cli._options import SIZE, data_option, out_option


@click.command("erf")
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option(default=None)
@click.option("--split", default="val", show_default=True)
@click.option("--images", type=click.IntRange(min=1), default=16, show_default=True, help="Images averaged over.")
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@out_option("The PNG to write (the numbers go to the same name with .json). [default: RUN_DIR/erf.png]", file=True)
def erf_command(
    run_dir: Path, data: str | None, split: str, images: int, image_size: tuple[int, int] | None, out: Path | None
) -> None:
    """How far the prediction at the image centre reaches into the input: the gradient of the
    centre pixel's logits (summed over classes) with respect to the image, |·| summed over RGB and
    averaged over --images images. Models with global attention reach across the whole image;
    CNNs stay local — and the paper links the wide field to patch-attack vulnerability.

    Prints the radii holding 50 % and 90 % of the gradient mass; writes the heat map (log scale)
    to --out and the numbers to the same name with .json.

    \b
    Examples:
      harden erf runs/seg --out seg-erf.png
      harden erf runs/psp --images 64
    """
    from harden._io import write_json
    from harden.data import open_dataset
    from harden.erf import effective_receptive_field, plot_field
    from harden.outputs import figure_file
    from harden.run import load_model, read_config

    model_config, train_config = read_config(run_dir)
    model, _ = load_model(run_dir)
    dataset = open_dataset(data or train_config.data, split, size=image_size or train_config.image_size,
                           num_images=images, seed=train_config.seed)  # fmt: skip
    field = effective_receptive_field(model, dataset, images)
    r50, r90 = field.radius(0.5), field.radius(0.9)
    out = figure_file(out or run_dir / "erf.png")
    figure_file(out.with_suffix(".json"))
    plot_field(field, model_config.name, out)
    numbers = {"run_dir": str(run_dir), "model": model_config.name, "ram": model_config.ram,
               "images": field.images, "radius_50": r50, "radius_90": r90}  # fmt: skip
    write_json(out.with_suffix(".json"), numbers)
    click.echo(json.dumps(numbers))
    click.echo(f"wrote {out}, {out.with_suffix('.json')}")
