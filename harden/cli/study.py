"""`harden study`: reproduce a paper's experiment on a trained run (Arnab et al. §6–7)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harden.cli._options import (
    EPS_LIST,
    NAMES,
    SCALES,
    SIZE,
    Command,
    crf_options,
    crf_settings,
    data_option,
    device_option,
    out_option,
    progress_option,
    randomness_options,
    resolve_device,
)
from harden.data_spec import MAX_ITERS


@click.group("study")
def study_group() -> None:
    """Experiments from the papers, on any trained run.

    \b
      transfer-scales  perturbations crafted at each input scale, evaluated at every other (§6)
      crf              untargeted vs targeted attacks with and without a mean-field CRF (§7)
    """


def _common(command: Any) -> Any:
    """The options both studies share: data, attack strength, randomness, output."""
    options: list[Callable[[Any], Any]] = [
        data_option(default=None),
        click.option("--split", default="val", show_default=True),
        click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]"),
        click.option("--images", type=click.IntRange(min=1), default=None, help="Only the first N images."),
        click.option("--iters", type=click.IntRange(min=1, max=MAX_ITERS), default=None,
                     help="Iterations of the iterative attacks. [default: min(ε+4, ⌈1.25ε⌉) as Kurakin et al.]"),
        randomness_options,
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        out_option("Where to write the JSON and PNG. [default: RUN_DIR/study]"),
        device_option,
        progress_option,
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _attack_list(names: tuple[str, ...]) -> tuple[str, ...]:
    from harden.attack_catalogue import check_attack_names

    return tuple(check_attack_names(names))


@study_group.command(
    "transfer-scales", cls=Command, renamed={"--report": "--out"},
    short_help="Perturbations crafted at each input scale, evaluated at every other (§6).",
)  # fmt: skip
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--scales", type=SCALES, default="0.5,0.75,1", show_default=True,
              help="Input scales of the network; the multiscale model fuses all of them.")  # fmt: skip
@click.option("--fusion", type=click.Choice(["max", "mean"]), default="max", show_default=True)
@click.option("--other", "others", multiple=True, type=click.Path(path_type=Path),
              help="Another run to evaluate on every source's perturbations (repeatable).")  # fmt: skip
@click.option("--attack", "attack_names", type=NAMES, default="fgsm,bim-ll", show_default=True,
              help="Attacks (table 1: FGSM and Iterative FGSM II).")  # fmt: skip
@click.option("--eps", "eps_values", type=EPS_LIST, default="8/255", show_default=True)
@_common
def transfer_scales_command(
    run_dir: Path, scales: tuple[float, ...], fusion: str, others: tuple[Path, ...], attack_names: tuple[str, ...],
    eps_values: tuple[float, ...],
    data: str | None, split: str, image_size: Any, images: int | None, iters: int | None, eot: int | None,
    draws: int | None, batch_size: int, seed: int, out: Path | None, device: str, progress: bool,
) -> None:  # fmt: skip
    """Table 1 of Arnab et al.: do perturbations crafted at one input scale hurt at another?

    RUN_DIR's network (the single-scale network, if the run was trained with --scales) is run at
    each of --scales and at all of them fused. Each attack crafts on each of these (white-box)
    and every one of them — plus each --other run — segments every perturbed image. Cells are
    IoU ratios (adversarial / clean mIoU): rows the evaluated network, columns the source,
    white-box cells in brackets. Prints whether the paper's observations hold here: multiscale
    is more robust, single-scale perturbations transfer poorly across scales, multiscale
    perturbations transfer best. Writes OUT/transfer_scales.json and .png.

    \b
    Examples:
      harden study transfer-scales runs/deeplab --data synthetic --images 32
      harden study transfer-scales runs/deeplab --other runs/psp --attack fgsm,bim-ll --eps 4/255,8/255
    """
    from harden._io import write_json
    from harden.attacks import is_randomised
    from harden.attacks.base import draws_default, eot_default
    from harden.models.compose import network_of
    from harden.run import load_model, open_run
    from harden.studies.transfer_scales import format_tables, plot_tables, transfer_scales

    attacks = _attack_list(attack_names)
    device = resolve_device(device)
    run = open_run(run_dir, device, data=data, split=split, image_size=image_size, images=images)
    model, model_config, dataset = run.model, run.model_config, run.dataset
    network = network_of(model)
    other_models = {}
    for other in others:
        other_model, other_config = load_model(other, device)
        other_models[f"{other_config.name} ({other.name})"] = other_model
    randomised = is_randomised(network) or any(is_randomised(m) for m in other_models.values())
    click.echo(f"transfer across scales {','.join(f'{s:g}' for s in scales)} of {model_config.name} "
               f"on {len(dataset)} {split} images ...")  # fmt: skip
    result = transfer_scales(
        network, dataset, scales=scales, fusion="mean" if fusion == "mean" else "max", others=other_models,
        attacks=attacks, eps_values=eps_values, steps=iters, eot=eot_default(randomised, eot),
        draws=draws_default(randomised, draws), seed=seed, batch_size=batch_size, device=device,
        progress=progress and sys.stderr.isatty(),
    )  # fmt: skip
    click.echo(format_tables(result))
    out = out or run_dir / "study"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(run_dir), "model": model_config.name, "scales": list(scales), "fusion": fusion,
            "attacks": list(attacks), "eps": list(eps_values), "images": len(dataset), "seed": seed}  # fmt: skip
    write_json(out / "transfer_scales.json", {**meta, **result.to_dict()})
    plot_tables(result, out / "transfer_scales.png")
    click.echo(f"wrote {out / 'transfer_scales.json'}, {out / 'transfer_scales.png'}")


@study_group.command("crf", cls=Command, renamed={"--report": "--out"},
                     short_help="Attacks with and without a mean-field CRF; gradient masking (§7).")  # fmt: skip
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--attack", "attack_names", type=NAMES, default="fgsm,bim,fgsm-ll,bim-ll", show_default=True,
              help="Untargeted (fgsm, bim) and targeted (fgsm-ll, bim-ll: least likely class) attacks.")  # fmt: skip
@click.option("--eps", "eps_values", type=EPS_LIST, default="4/255,8/255", show_default=True)
@crf_options
@_common
def crf_command(
    run_dir: Path, attack_names: tuple[str, ...], eps_values: tuple[float, ...], crf_iterations: int,
    crf_window: int, crf_spatial_sigma: float,
    crf_bilateral_sigma: float, crf_color_sigma: float, crf_weights: tuple[float, float], data: str | None,
    split: str, image_size: Any, images: int | None, iters: int | None, eot: int | None, draws: int | None,
    batch_size: int, seed: int, out: Path | None, device: str, progress: bool,
) -> None:  # fmt: skip
    """Arnab et al. §7: does a mean-field CRF resist attacks, or only mask gradients?

    The run's model is attacked without and with a CRF: its own CRF if it was trained with
    --crf (the CRF options are then ignored), else one appended with the CRF options (as
    DeepLab's post-processing). On the CRF model every attack also runs crafted on the unaries
    (the model without CRF, §7.2). Prints clean confidence and entropy, IoU ratios, the sanity
    checks of the CRF evaluation — white>surrogate fails when the unaries' perturbations beat the
    white-box attack, a sign of gradient masking — and whether the paper's observations hold.
    Exits 1 when a sanity check fails, as `harden attack` does. Writes OUT/crf_study.json
    and .png.

    \b
    Examples:
      harden study crf runs/deeplab --images 32
      harden study crf runs/deeplab --crf-iterations 10 --crf-weights 6,10 --eps 2/255,4/255,8/255
    """
    from harden._io import write_json
    from harden.attacks import is_randomised
    from harden.attacks.base import eot_default
    from harden.cli._exits import Failed
    from harden.models.compose import compose
    from harden.models.crf import crf_unaries
    from harden.run import open_run
    from harden.studies.crf import crf_study, format_table, plot_study

    crf_config = crf_settings(
        crf_iterations, crf_window, crf_spatial_sigma, crf_bilateral_sigma, crf_color_sigma, crf_weights
    )
    attacks = _attack_list(attack_names)
    device = resolve_device(device)
    run = open_run(run_dir, device, data=data, split=split, image_size=image_size, images=images)
    model, model_config, dataset = run.model, run.model_config, run.dataset
    unaries = crf_unaries(model)
    if unaries is not None:
        with_crf, without_crf, which = model, unaries, "its trained CRF"
    else:
        with_crf, without_crf, which = compose(model, crf=crf_config).to(device).eval(), model, "an appended CRF"
    randomised = is_randomised(model)
    click.echo(f"{model_config.name} with and without {which} on {len(dataset)} {split} images ...")
    result = crf_study(
        without_crf, with_crf, dataset, attacks=attacks, eps_values=eps_values, steps=iters,
        eot=eot_default(randomised, eot), draws=draws, seed=seed, batch_size=batch_size, device=device,
        progress=progress and sys.stderr.isatty(),
    )  # fmt: skip
    click.echo(format_table(result))
    out = out or run_dir / "study"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(run_dir), "model": model_config.name, "crf": which,
            "crf_settings": model_config.crf if unaries is not None else crf_config.to_dict(),
            "attacks": list(attacks), "images": len(dataset), "seed": seed}  # fmt: skip
    write_json(out / "crf_study.json", {**meta, **result.to_dict()})
    plot_study(result, out / "crf_study.png")
    click.echo(f"wrote {out / 'crf_study.json'}, {out / 'crf_study.png'}")
    if any(c.status == "fail" for c in result.checks):
        raise Failed("a sanity check of the CRF evaluation failed (see above): the CRF's robustness is not real")
