"""`harden study`: reproduce a paper's experiment on a trained run (Arnab et al. §6–7)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harden.cli._options import SIZE, crf_options, crf_settings, data_option, device_option, progress_option
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
    options = [
        data_option(default=None),
        click.option("--split", default="val", show_default=True),
        click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]"),
        click.option("--images", type=click.IntRange(min=1), default=None, help="Only the first N images."),
        click.option("--iters", type=click.IntRange(min=1, max=MAX_ITERS), default=None,
                     help="Iterations of the iterative attacks. [default: min(ε+4, ⌈1.25ε⌉) as Kurakin et al.]"),
        click.option("--eot", type=click.IntRange(min=1), default=None,
                     help="EOT draws per gradient for a randomised (RAD) model. [default: 8 if randomised, else 1]"),
        click.option("--draws", type=click.IntRange(min=1), default=None,
                     help="Evaluation draws of a randomised model; the worst counts. [default: 3]"),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Where to write the JSON and PNG. [default: RUN_DIR/study]"),
        device_option,
        progress_option,
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _open(run_dir: Path, data: str | None, split: str, image_size: Any, images: int | None, device: str) -> Any:
    from harden.cli._options import resolve_device
    from harden.data import open_dataset
    from harden.errors import InputError
    from harden.run import load_model, read_config

    model_config, train_config = read_config(run_dir)
    device = resolve_device(device)
    model, _ = load_model(run_dir, device)
    dataset = open_dataset(
        data or train_config.data,
        split,
        size=image_size or train_config.image_size,
        num_images=images or train_config.val_images,
        seed=train_config.seed,
    )
    if dataset.num_classes != model_config.num_classes:
        raise InputError(
            f"the data has {dataset.num_classes} classes but the model predicts {model_config.num_classes}"
        )
    return model, model_config, dataset, device


def _eps_list(spec: str) -> tuple[float, ...]:
    from harden.attacks import ThreatModel, parse_eps

    values = tuple(sorted({parse_eps(e) for e in spec.split(",") if e.strip()}))
    for eps in values:
        ThreatModel(eps)  # refuses an ε outside the box (exit 2)
    return values


def _attack_list(spec: str) -> tuple[str, ...]:
    from harden.attacks import ATTACKS
    from harden.errors import InputError

    names = tuple(a.strip() for a in spec.split(",") if a.strip())
    unknown = [a for a in names if a not in ATTACKS]
    if not names or unknown:
        raise InputError(f"unknown attack {', '.join(unknown) or '(none)'}; choose from {', '.join(ATTACKS)}")
    return names


@study_group.command(
    "transfer-scales", short_help="Perturbations crafted at each input scale, evaluated at every other (§6)."
)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--scales", "scales_spec", default="0.5,0.75,1", show_default=True, metavar="S[,S...]",
              help="Input scales of the network; the multiscale model fuses all of them.")  # fmt: skip
@click.option("--fusion", type=click.Choice(["max", "mean"]), default="max", show_default=True)
@click.option("--other", "others", multiple=True, type=click.Path(path_type=Path),
              help="Another run to evaluate on every source's perturbations (repeatable).")  # fmt: skip
@click.option("--attack", "attack_spec", default="fgsm,bim-ll", show_default=True, metavar="NAME[,NAME...]",
              help="Attacks (table 1: FGSM and Iterative FGSM II).")  # fmt: skip
@click.option("--eps", "eps_spec", default="8/255", show_default=True, metavar="EPS[,EPS...]")
@_common
def transfer_scales_command(
    run_dir: Path, scales_spec: str, fusion: str, others: tuple[Path, ...], attack_spec: str, eps_spec: str,
    data: str | None, split: str, image_size: Any, images: int | None, iters: int | None, eot: int | None,
    draws: int | None, batch_size: int, seed: int, report_dir: Path | None, device: str, progress: bool,
) -> None:  # fmt: skip
    """Table 1 of Arnab et al.: do perturbations crafted at one input scale hurt at another?

    RUN_DIR's network (the single-scale network, if the run was trained with --scales) is run at
    each of --scales and at all of them fused. Each attack crafts on each of these (white-box)
    and every one of them — plus each --other run — segments every perturbed image. Cells are
    IoU ratios (adversarial / clean mIoU): rows the evaluated network, columns the source,
    white-box cells in brackets. Prints whether the paper's observations hold here: multiscale
    is more robust, single-scale perturbations transfer poorly across scales, multiscale
    perturbations transfer best. Writes REPORT/transfer_scales.json and .png.

    \b
    Examples:
      harden study transfer-scales runs/deeplab --data synthetic --images 32
      harden study transfer-scales runs/deeplab --other runs/psp --attack fgsm,bim-ll --eps 4/255,8/255
    """
    from harden._io import write_json
    from harden.attacks import is_randomised
    from harden.attacks.base import draws_default, eot_default
    from harden.cli._options import parse_scales
    from harden.models.compose import network_of
    from harden.run import load_model
    from harden.studies.transfer_scales import format_tables, plot_tables, transfer_scales

    scales = parse_scales(scales_spec)
    assert scales is not None
    attacks, eps_values = _attack_list(attack_spec), _eps_list(eps_spec)
    model, model_config, dataset, device = _open(run_dir, data, split, image_size, images, device)
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
    out = report_dir or run_dir / "study"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(run_dir), "model": model_config.name, "scales": list(scales), "fusion": fusion,
            "attacks": list(attacks), "eps": list(eps_values), "images": len(dataset), "seed": seed}  # fmt: skip
    write_json(out / "transfer_scales.json", {**meta, **result.to_dict()})
    plot_tables(result, out / "transfer_scales.png")
    click.echo(f"wrote {out / 'transfer_scales.json'}, {out / 'transfer_scales.png'}")


@study_group.command("crf", short_help="Attacks with and without a mean-field CRF; gradient masking (§7).")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--attack", "attack_spec", default="fgsm,bim,fgsm-ll,bim-ll", show_default=True,
              metavar="NAME[,NAME...]",
              help="Untargeted (fgsm, bim) and targeted (fgsm-ll, bim-ll: least likely class) attacks.")  # fmt: skip
@click.option("--eps", "eps_spec", default="4/255,8/255", show_default=True, metavar="EPS[,EPS...]")
@crf_options
@_common
def crf_command(
    run_dir: Path, attack_spec: str, eps_spec: str, crf_iterations: int, crf_window: int, crf_spatial_sigma: float,
    crf_bilateral_sigma: float, crf_color_sigma: float, crf_weights: tuple[float, float], data: str | None,
    split: str, image_size: Any, images: int | None, iters: int | None, eot: int | None, draws: int | None,
    batch_size: int, seed: int, report_dir: Path | None, device: str, progress: bool,
) -> None:  # fmt: skip
    """Arnab et al. §7: does a mean-field CRF resist attacks, or only mask gradients?

    The run's model is attacked without and with a CRF: its own CRF if it was trained with
    --crf (the CRF options are then ignored), else one appended with the CRF options (as
    DeepLab's post-processing). On the CRF model every attack also runs crafted on the unaries
    (the model without CRF, §7.2). Prints clean confidence and entropy, IoU ratios, the sanity
    checks of the CRF evaluation — white>surrogate fails when the unaries' perturbations beat the
    white-box attack, a sign of gradient masking — and whether the paper's observations hold.
    Exits 1 when a sanity check fails, as `harden attack` does. Writes REPORT/crf_study.json
    and .png.

    \b
    Examples:
      harden study crf runs/deeplab --images 32
      harden study crf runs/deeplab --crf-iterations 10 --crf-weights 6,10 --eps 2/255,4/255,8/255
    """
    from harden._io import write_json
    from harden.attacks import is_randomised
    from harden.attacks.base import eot_default
    from harden.cli import Failed
    from harden.models.compose import compose
    from harden.models.crf import crf_unaries
    from harden.studies.crf import crf_study, format_table, plot_study

    crf_config = crf_settings(
        crf_iterations, crf_window, crf_spatial_sigma, crf_bilateral_sigma, crf_color_sigma, crf_weights
    )
    attacks, eps_values = _attack_list(attack_spec), _eps_list(eps_spec)
    model, model_config, dataset, device = _open(run_dir, data, split, image_size, images, device)
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
    out = report_dir or run_dir / "study"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(run_dir), "model": model_config.name, "crf": which,
            "crf_settings": model_config.crf if unaries is not None else crf_config.to_dict(),
            "attacks": list(attacks), "images": len(dataset), "seed": seed}  # fmt: skip
    write_json(out / "crf_study.json", {**meta, **result.to_dict()})
    plot_study(result, out / "crf_study.png")
    click.echo(f"wrote {out / 'crf_study.json'}, {out / 'crf_study.png'}")
    if any(c.status == "fail" for c in result.checks):
        raise Failed("a sanity check of the CRF evaluation failed (see above): the CRF's robustness is not real")
