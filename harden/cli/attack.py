"""`harden attack`: clean vs adversarial robustness of a trained run, with sanity checks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harden.attack_catalogue import ATTACK_SUMMARIES, PATCH_SUMMARIES, check_attack_names
from harden.cli._options import (
    EPS_LIST,
    NAMES,
    SIZE,
    Command,
    data_option,
    device_option,
    out_option,
    progress_option,
    randomness_options,
    resolve_device,
)
from harden.cli._patch import PATCH_DEFAULT_ATTACKS, patch_options, run_patch_command
from harden.data_spec import MAX_QUERIES
from harden.errors import InputError


def _attack_help() -> str:
    return "\n".join(f"  {name:<13} {summary}" for name, summary in ATTACK_SUMMARIES.items())


def _patch_attack_help() -> str:
    return "\n".join(f"  {name:<15} {summary}" for name, summary in PATCH_SUMMARIES.items())


class AttackCommand(Command):
    """Lists the registered attacks at the end of --help."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text("Attacks:")
        formatter.write("\n".join("  " + line for line in _attack_help().splitlines()) + "\n")
        formatter.write_paragraph()
        formatter.write_text("Patch attacks (with --patch; RAM paper Appendix A):")
        formatter.write("\n".join("  " + line for line in _patch_attack_help().splitlines()) + "\n")


L_INF_DEFAULT_ATTACKS = "fgsm,pgd,segpgd,sea"


@click.command("attack", cls=AttackCommand, renamed={"--report": "--out"})
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option(default=None)
@click.option("--attack", "attack_names", type=NAMES, default=None,
              help=f"Attacks to run (listed below). The random-noise floor is always added for the checks. "
              f"[default: {L_INF_DEFAULT_ATTACKS}; with --patch: {PATCH_DEFAULT_ATTACKS}]")  # fmt: skip
@click.option("--eps", "eps_values", type=EPS_LIST, default="2/255,4/255,8/255", show_default=True,
              help="L∞ radii on [0, 1] pixels, as fractions or decimals.")  # fmt: skip
@click.option("--iters", type=click.IntRange(min=1, max=MAX_QUERIES), default=None,
              help="Iterations (queries for square) of every attack. [default: each attack's own]")  # fmt: skip
@randomness_options
@click.option(
    "--allow-random", is_flag=True, help="Attack a randomised model without EOT anyway (flagged as not sound)."
)
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Transfer: craft on this run's model, evaluate on RUN_DIR's.")  # fmt: skip
@click.option("--split", default="val", show_default=True)
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@click.option("--images", type=click.IntRange(min=1), default=None, help="Attack only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed → same perturbations.")
@click.option("--examples", type=click.IntRange(min=0), default=4, show_default=True, help="Images in the overlay PNG.")
@out_option("Report directory. [default: RUN_DIR/attack, with --patch RUN_DIR/patch-attack]")
@patch_options
@device_option
@progress_option
def attack_command(
    run_dir: Path, data: str | None, attack_names: tuple[str, ...] | None, eps_values: tuple[float, ...],
    iters: int | None, eot: int | None, draws: int | None, allow_random: bool, source: Path | None, split: str,
    image_size: tuple[int, int] | None, images: int | None, batch_size: int, seed: int, examples: int,
    out: Path | None, patch: int | None, device: str, progress: bool, **patch_settings: object,
) -> None:  # fmt: skip
    """Attack the model of RUN_DIR and report clean vs adversarial pAcc, mIoU and IoU ratio.

    Every attack runs at every ε on every image; the table gives each attack's result, the
    members of ensembles (SEA's four losses), and the worst case over all attacks per ε (per
    image for pAcc, a worst-case assignment of attacks to images for mIoU). A model with RAD is
    random at evaluation: it is attacked with EOT and predicted over several draws, and every
    draw counts towards the worst case.

    Sanity checks (docs/design.md §6) run with every evaluation; if one fails the command exits 1.
    Writes OUT/attack.json, OUT/robustness.png (mIoU and pAcc against ε) and OUT/examples.png
    (clean and adversarial predictions under the strongest attack).

    With --patch M: the RAM paper's patch protocol instead. Each image gets targets (Permute,
    Strip or none), each patch attack runs Algorithm 1 for --iters steps (default 50; the paper
    400) on the M×M patch, and the table gives targeted mIoU (prediction vs target, lower = more
    robust), mIoU and pixel accuracy outside the patch (eq. 21), worst over RAD draws. Writes
    OUT/patch_attack.json and OUT/examples.png (patch outlined, target, predictions).

    \b
    Examples:
      harden attack runs/seg --attack sea --eps 4/255,8/255
      harden attack runs/seg-ram --attack pgd,apgd-jsd --eot 8 --iters 50
      harden attack runs/psp --source runs/seg --attack pgd      # transfer seg → psp
      harden attack runs/seg-ram --patch 24 --target strip --attack dag,maxattn-dag,eot
    """
    from harden.attacks.protocols import robustness_protocol
    from harden.attacks.report import format_table, write_attack_report
    from harden.cli._exits import Failed
    from harden.memory import require_model_fits
    from harden.run import load_model, open_run
    from harden.visualize import palette_for

    show = progress and sys.stderr.isatty()
    if patch is not None:
        if source is not None:
            raise InputError("--source (transfer) is not available for patch attacks")
        run_patch_command(run_dir, attack_names or tuple(PATCH_DEFAULT_ATTACKS.split(",")), patch, data=data,
                          split=split, image_size=image_size, images=images, iters=iters, eot=eot, draws=draws,
                          seed=seed, batch_size=batch_size, examples=examples, out=out, device=device,
                          progress=show, **patch_settings)  # type: ignore[arg-type]  # fmt: skip
        return
    attacks = check_attack_names(attack_names or tuple(L_INF_DEFAULT_ATTACKS.split(",")))
    device = resolve_device(device)
    run = open_run(run_dir, device, data=data, split=split, image_size=image_size, images=images)
    height, width = run.dataset[0][0].shape[-2:]
    require_model_fits({"model": run.model}, batch_size, height, width, what="attacking the model", backward=True,
                       classes=run.model_config.num_classes, device=device)  # fmt: skip
    result = robustness_protocol(
        run, attacks, list(eps_values), iters=iters, eot=eot, draws=draws, allow_random=allow_random, seed=seed,
        source=(source, load_model(source, device)[0]) if source is not None else None, batch_size=batch_size,
        device=device, examples=examples, progress=show,
    )  # fmt: skip
    click.echo(format_table(result.summary))
    palette = palette_for(run.dataset.name, run.dataset.num_classes)
    written = write_attack_report(result.summary, result.evaluation, run.model, out or run_dir / "attack",
                                  examples=examples > 0, palette=palette)  # fmt: skip
    click.echo("wrote " + ", ".join(str(p) for p in written))
    if not result.summary["sound"]:
        raise Failed("a sanity check failed (see above): these robustness numbers cannot be trusted")
