"""`harden attack`: clean vs adversarial robustness of a trained run, with sanity checks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from harden.attack_catalogue import ATTACK_SUMMARIES, PATCH_SUMMARIES
from harden.cli._options import SIZE, data_option, device_option, progress_option, resolve_device
from harden.cli._patch import DEFAULT_ATTACKS as PATCH_DEFAULT_ATTACKS
from harden.cli._patch import run_patch_attacks
from harden.data_spec import MAX_QUERIES


def _attack_help() -> str:
    return "\n".join(f"  {name:<13} {summary}" for name, summary in ATTACK_SUMMARIES.items())


def _patch_attack_help() -> str:
    return "\n".join(f"  {name:<15} {summary}" for name, summary in PATCH_SUMMARIES.items())


class AttackCommand(click.Command):
    """Lists the registered attacks at the end of --help."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text("Attacks:")
        formatter.write("\n".join("  " + line for line in _attack_help().splitlines()) + "\n")
        formatter.write_paragraph()
        formatter.write_text("Patch attacks (with --patch; RAM paper Appendix A):")
        formatter.write("\n".join("  " + line for line in _patch_attack_help().splitlines()) + "\n")


@click.command("attack", cls=AttackCommand)
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option(default=None)
@click.option(
    "--attack",
    "attack_spec",
    default="fgsm,pgd,segpgd,sea",
    show_default=True,
    metavar="NAME[,NAME...]",
    help="Attacks to run (listed below). The random-noise floor is always added for the checks.",
)
@click.option(
    "--eps",
    "eps_spec",
    default="2/255,4/255,8/255",
    show_default=True,
    metavar="EPS[,EPS...]",
    help="L∞ radii on [0, 1] pixels, as fractions or decimals.",
)
@click.option(
    "--iters",
    type=click.IntRange(min=1, max=MAX_QUERIES),
    default=None,
    help="Iterations (queries for square) of every attack. [default: each attack's own]",
)
@click.option(
    "--eot",
    type=click.IntRange(min=1),
    default=None,
    help="EOT draws per gradient for a randomised (RAD) model. [default: 8 if randomised, else 1]",
)
@click.option(
    "--draws",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluation draws of a randomised model. [default: 3 if randomised]",
)
@click.option(
    "--allow-random", is_flag=True, help="Attack a randomised model without EOT anyway (flagged as not sound)."
)
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    default=None,
    help="Transfer: craft on this run's model, evaluate on RUN_DIR's.",
)
@click.option("--split", default="val", show_default=True)
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@click.option("--images", type=click.IntRange(min=1), default=None, help="Attack only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed → same perturbations.")
@click.option("--examples", type=click.IntRange(min=0), default=4, show_default=True, help="Images in the overlay PNG.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="[default: RUN_DIR/attack]",
)
@click.option("--patch", type=click.IntRange(min=1), default=None, metavar="M",
              help="Patch attacks (RAM paper §5.1): only an M×M patch may change, to any value in [0, 1]; "
              "--attack then names patch attacks (listed below), --eps is unused.")  # fmt: skip
@click.option("--location", default="lower-right", show_default=True,
              help="Patch place: lower-right, lower-left, upper-right, upper-left, center, random, "
              "or Y,X.")  # fmt: skip
@click.option("--target", type=click.Choice(["permute", "strip", "none"]), default="permute", show_default=True,
              help="Patch attacks' goal: Permute (present classes → absent ones), Strip (stripes of absent "
              "classes) or none (untargeted).")  # fmt: skip
@click.option("--stripes", type=click.IntRange(min=1), default=4, show_default=True, help="Stripes of --target strip.")
@click.option("--gamma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Patch attacks' step γ (Algorithm 1). [default: 0.005 for pgd, 1 otherwise]")  # fmt: skip
@click.option("--alpha", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the attention terms of the attention-aware patch attacks.")  # fmt: skip
@device_option
@progress_option
def attack_command(
    run_dir: Path,
    data: str | None,
    attack_spec: str,
    eps_spec: str,
    iters: int | None,
    eot: int | None,
    draws: int | None,
    allow_random: bool,
    source: Path | None,
    split: str,
    image_size: tuple[int, int] | None,
    images: int | None,
    batch_size: int,
    seed: int,
    examples: int,
    report_dir: Path | None,
    patch: int | None,
    location: str,
    target: str,
    stripes: int,
    gamma: float | None,
    alpha: float,
    device: str,
    progress: bool,
) -> None:
    """Attack the model of RUN_DIR and report clean vs adversarial pAcc, mIoU and IoU ratio.

    Every attack runs at every ε on every image; the table gives each attack's result, the
    members of ensembles (SEA's four losses), and the worst case over all attacks per ε (per
    image for pAcc, a worst-case assignment of attacks to images for mIoU). A model with RAD is
    random at evaluation: it is attacked with EOT and predicted over several draws, and every
    draw counts towards the worst case.

    Sanity checks (DESIGN.md §6) run with every evaluation; if one fails the command exits 1.
    Writes REPORT/attack.json, REPORT/robustness.png (mIoU and pAcc against ε) and
    REPORT/examples.png (clean and adversarial predictions under the strongest attack).

    With --patch M: the RAM paper's patch protocol instead. Each image gets targets (Permute,
    Strip or none), each patch attack runs Algorithm 1 for --iters steps (default 50; the paper
    400) on the M×M patch, and the table gives targeted mIoU (prediction vs target, lower = more
    robust), mIoU and pixel accuracy outside the patch (eq. 21), worst over RAD draws. Writes
    REPORT/patch_attack.json and REPORT/examples.png (patch outlined, target, predictions).

    \b
    Examples:
      harden attack runs/seg --attack sea --eps 4/255,8/255
      harden attack runs/seg-ram --attack pgd,apgd-jsd --eot 8 --iters 50
      harden attack runs/psp --source runs/seg --attack pgd      # transfer seg → psp
      harden attack runs/seg-ram --patch 24 --target strip --attack dag,maxattn-dag,eot
    """
    from harden._io import write_json
    from harden.attacks import ATTACKS, ThreatModel, is_randomised, parse_eps
    from harden.attacks.base import eot_default
    from harden.attacks.checks import run_checks
    from harden.attacks.evaluate import evaluate_robustness
    from harden.attacks.report import WORST, format_table, plot_curves, save_overlays, summarise
    from harden.cli import Failed
    from harden.data import collate_pad, open_dataset
    from harden.errors import InputError
    from harden.models.crf import crf_unaries
    from harden.run import load_model, read_config
    from harden.visualize import palette_for

    attacks = [a.strip() for a in attack_spec.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if patch is None and (not attacks or unknown):
        raise InputError(f"unknown attack {', '.join(unknown) or '(none)'}; choose from {', '.join(ATTACKS)}")
    if patch is not None:
        from harden.attacks import create_patch_attack
        from harden.attacks.patch import PatchMask

        if source is not None:
            raise InputError("--source (transfer) is not available for patch attacks")
        if click.get_current_context().get_parameter_source("attack_spec") is ParameterSource.DEFAULT:
            attack_spec = PATCH_DEFAULT_ATTACKS
        for name in attack_spec.split(","):  # refuse bad names and parameters before loading anything
            create_patch_attack(name.strip(), gamma=gamma, alpha=alpha)
        PatchMask(patch, location)
    eps_values = sorted({parse_eps(e) for e in eps_spec.split(",")})
    for eps in eps_values:  # refuse an ε above the box now, before loading anything
        ThreatModel(eps)

    model_config, train_config = read_config(run_dir)
    device = resolve_device(device)
    model, _ = load_model(run_dir, device)
    source_model = load_model(source, device)[0] if source is not None else None
    randomised = is_randomised(model) or (source_model is not None and is_randomised(source_model))
    eot = eot_default(randomised and not allow_random, eot)
    data = data or train_config.data
    dataset = open_dataset(
        data,
        split,
        size=image_size or train_config.image_size,
        num_images=images or train_config.val_images,
        seed=train_config.seed,
    )
    if dataset.num_classes != model_config.num_classes:
        raise InputError(f"{data} has {dataset.num_classes} classes but the model predicts {model_config.num_classes}")
    if patch is not None:
        run_patch_attacks(
            run_dir, model, model_config, dataset, attack_spec=attack_spec, patch=patch, location=location,
            target=target, stripes=stripes, iters=iters, gamma=gamma, alpha=alpha, eot=eot, draws=draws, seed=seed,
            batch_size=batch_size, examples=examples, report_dir=report_dir, device=device, progress=progress,
        )  # fmt: skip
        return

    show = progress and sys.stderr.isatty()
    # A CRF's mean field can mask gradients (Arnab et al. §7): also craft on its unaries.
    unaries = crf_unaries(model) if source_model is None else None
    evaluation = evaluate_robustness(
        model, dataset, attacks, eps_values, steps=iters, eot=eot, allow_random=allow_random, seed=seed,
        draws=draws, source=source_model, surrogates={"unaries": unaries} if unaries is not None else None,
        batch_size=batch_size, device=device, examples=examples, progress=show,
    )  # fmt: skip
    check_images, check_labels = collate_pad([dataset[i] for i in range(min(4, len(dataset)))])
    checks = run_checks(evaluation, model, check_images.to(device), check_labels.to(device), eot=eot)
    meta: dict[str, Any] = {
        "run_dir": str(run_dir), "model": model_config.name, "ram": model_config.ram, "data": data, "split": split,
        "attacks": attacks, "iters": iters, "eot": eot, "seed": seed, "source": str(source) if source else None,
    }  # fmt: skip
    summary = summarise(evaluation, checks, meta)
    click.echo(format_table(summary))

    out = report_dir or run_dir / "attack"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attack.json", summary)
    plot_curves(summary, out / "robustness.png")
    written = [out / "attack.json", out / "robustness.png"]
    if examples:
        strongest = min(
            (r for r in summary["rows"] if r["attack"] != WORST and r["eps"] == eps_values[-1]), key=lambda r: r["miou"]
        )
        save_overlays(
            evaluation,
            model,
            f"{strongest['attack']}@{eps_values[-1]}" + (f"[{c}]" if (c := strongest["crafted_on"]) else ""),
            out / "examples.png",
            palette_for(dataset.name, dataset.num_classes),
        )
        written.append(out / "examples.png")
    click.echo("wrote " + ", ".join(str(p) for p in written))
    if not summary["sound"]:
        raise Failed("a sanity check failed (see above): these robustness numbers cannot be trusted")
