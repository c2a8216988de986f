"""`harden attack --patch M`: the RAM paper's patch-attack protocol (§5.1, Appendix A).

Kept apart from `attack.py`: patch attacks have their own threat model (pixels under a patch,
no ε), targets and metrics, so they share only the command's data and model options. The work
is `harden.attacks.protocols.patch_protocol`, the report `harden.attacks.patch_report`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

PATCH_DEFAULT_ATTACKS = "dag,ipatch,maxattn-dag"


def patch_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--patch and the settings that only patch attacks read."""
    options = [
        click.option("--patch", type=click.IntRange(min=1), default=None, metavar="M",
                     help="Patch attacks (RAM paper §5.1): only an M×M patch may change, to any value in [0, 1]; "
                     "--attack then names patch attacks (listed below), --eps is unused."),
        click.option("--location", default="lower-right", show_default=True,
                     help="Patch place: lower-right, lower-left, upper-right, upper-left, center, random, or Y,X."),
        click.option("--target", type=click.Choice(["permute", "strip", "none"]), default="permute",
                     show_default=True, help="Patch attacks' goal: Permute (present classes → absent ones), Strip "
                     "(stripes of absent classes) or none (untargeted)."),
        click.option("--stripes", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Stripes of --target strip."),
        click.option("--gamma", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Patch attacks' step γ (Algorithm 1). [default: 0.005 for pgd, 1 otherwise]"),
        click.option("--alpha", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="Weight of the attention terms of the attention-aware patch attacks."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def run_patch_command(
    run_dir: Path, attacks: tuple[str, ...], patch: int, *, location: str, target: str, stripes: int,
    gamma: float | None, alpha: float, data: str | None, split: str, image_size: tuple[int, int] | None,
    images: int | None, iters: int | None, eot: int | None, draws: int | None, seed: int, batch_size: int,
    examples: int, out: Path | None, device: str, progress: bool,
) -> None:  # fmt: skip
    """Parse → `patch_protocol` → print the table and write the report; exit 1 if a check failed."""
    from harden.attacks import create_patch_attack
    from harden.attacks.patch import PatchMask
    from harden.attacks.patch_report import format_patch_table, write_patch_report
    from harden.attacks.protocols import patch_protocol
    from harden.cli._exits import Failed
    from harden.cli._options import resolve_device
    from harden.run import open_run
    from harden.visualize import palette_for

    for name in attacks:  # refuse unknown names and bad parameters before loading anything
        create_patch_attack(name, gamma=gamma, alpha=alpha)
    mask = PatchMask(patch, location, seed)
    device = resolve_device(device)
    run = open_run(run_dir, device, data=data, split=split, image_size=image_size, images=images)
    result = patch_protocol(
        run, list(attacks), mask, target, stripes=stripes, iters=iters, gamma=gamma, alpha=alpha, eot=eot,
        draws=draws, seed=seed, batch_size=batch_size, device=device, examples=examples, progress=progress,
    )  # fmt: skip
    click.echo(format_patch_table(result.summary))
    palette = palette_for(run.dataset.name, run.dataset.num_classes)
    written = write_patch_report(result.summary, result.evaluation, run.model, out or run_dir / "patch-attack",
                                 palette)  # fmt: skip
    click.echo("wrote " + ", ".join(str(p) for p in written))
    if not result.summary["sound"]:
        raise Failed("a patch-attack sanity check failed (see above): these numbers cannot be trusted")
