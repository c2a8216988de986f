"""`harden attention-map`: where one query position looks, baseline vs RAM (RAM paper Fig. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harden.cli._options import POINT, device_option, out_option, resolve_device


@click.command("attention-map")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--image",
    "image_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="An RGB image file. [default: validation image --index of the run's dataset]",
)
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Validation image to use.")
@click.option("--query", type=POINT, default=None, help="Query pixel Y,X. [default: the image centre]")
@click.option("--layer", default=None, help="Only layers whose name contains this text.")
@click.option(
    "--mas-threshold",
    type=float,
    default=0.3,
    show_default=True,
    help="MAS threshold for the RAM side when the run itself has no RAM.",
)
@click.option(
    "--rad-p",
    type=float,
    default=0.5,
    show_default=True,
    help="RAD drop probability for the RAM side when the run itself has no RAM.",
)
@click.option("--rad-seed", type=int, default=0, show_default=True, help="The RAD draw shown.")
@out_option("The PNG to write. [default: RUN_DIR/attention.png]", file=True)
@device_option
def attention_map_command(
    run_dir: Path,
    image_path: Path | None,
    index: int,
    query: tuple[int, int] | None,
    layer: str | None,
    mas_threshold: float,
    rad_p: float,
    rad_seed: int,
    out: Path | None,
    device: str,
) -> None:
    """Draw the attention of one query pixel over the image, for every global-attention layer.

    Columns: the image with the query marked; the attention with RAM off; with RAM on (after
    MAS, before RAD); and after RAD for one draw. Both sides use the run's weights: a run trained
    with RAM is shown with its RAM switched off and on, a plain run with RAM (--mas-threshold,
    --rad-p) inserted at inference. Windowed (Swin) layers are listed but not drawn.

    \b
    Example:
      harden attention-map runs/seg-ram --query 90,200 --out map.png
    """
    import torch

    from harden.data import open_dataset
    from harden.data.base import read_image
    from harden.errors import InputError
    from harden.outputs import figure_file
    from harden.ram import RAMConfig
    from harden.ram.attention_maps import plot_query_attention, query_attention, ram_comparison
    from harden.run import load_model, read_config

    _, train_config = read_config(run_dir)
    model, _ = load_model(run_dir, resolve_device(device))
    if image_path is not None:
        image = torch.from_numpy(read_image(image_path)).permute(2, 0, 1).float() / 255
    else:
        dataset = open_dataset(train_config.data, "val", size=train_config.image_size, seed=train_config.seed)
        if index >= len(dataset):
            raise InputError(f"--index {index}: the validation split has {len(dataset)} images")
        image = dataset[index][0]
    height, width = image.shape[-2:]
    query = query or (height // 2, width // 2)
    if not (0 <= query[0] < height and 0 <= query[1] < width):
        raise InputError(f"--query {query[0]},{query[1]} lies outside the {height}×{width} image")
    baseline, ram = ram_comparison(model, RAMConfig(threshold=mas_threshold, drop_p=rad_p))
    model_device = next(model.parameters()).device
    _require_memory(baseline, ram, height, width, rad_seed, model_device)
    image = image.to(model_device)
    base_maps, skipped = query_attention(baseline, image, query, rad_seed)
    ram_maps, _ = query_attention(ram, image, query, rad_seed)
    if layer is not None:
        base_maps = [m for m in base_maps if layer in m.name]
        ram_maps = [m for m in ram_maps if layer in m.name]
    if not base_maps:
        raise InputError(
            f"no global-attention layer to draw{f' matching {layer!r}' if layer else ''} "
            f"(windowed layers are not drawn: {len(skipped)} skipped)"
        )
    out = figure_file(out or run_dir / "attention.png")
    plot_query_attention(image.permute(1, 2, 0).cpu().numpy(), query, base_maps, ram_maps, out)
    for name in skipped:
        click.echo(f"not drawn (windowed or not on the image grid): {name}")
    click.echo(f"wrote {out}")


def _require_memory(baseline: Any, ram: Any, height: int, width: int, rad_seed: int, device: Any) -> None:
    """Refuse, before drawing, an image whose N×N attention maps do not fit (exit 2, with a size that does)."""
    import torch

    from harden.memory import fit_memory, require_fits
    from harden.ram.attention_maps import query_attention

    def step(batch: int, h: int, w: int) -> None:
        probe = torch.rand(3, h, w, device=device)
        query_attention(baseline, probe, (h // 2, w // 2), rad_seed)
        query_attention(ram, probe, (h // 2, w // 2), rad_seed)

    estimate = fit_memory(step, height, width, device=device)
    require_fits(estimate, 1, height, width, "drawing the attention maps", device=device,
                 size_option="an image downscaled to", batch_option=None)  # fmt: skip
