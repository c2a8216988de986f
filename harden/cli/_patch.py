"""`harden attack --patch M`: the RAM paper's patch-attack protocol (§5.1, Appendix A).

Kept apart from `attack.py`: patch attacks have their own threat model (pixels under a patch,
no ε), targets and metrics, so they share only the command's data and model options.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported in the functions: `harden --help` stays fast
    import numpy as np
    import torch

DEFAULT_ATTACKS = "dag,ipatch,maxattn-dag"
PATCH_SCHEMA = "harden-patch-attack-report-v1"


def run_patch_attacks(
    run_dir: Path,
    model: torch.nn.Module,
    model_config: Any,
    dataset: Any,
    *,
    attack_spec: str,
    patch: int,
    location: str,
    target: str,
    stripes: int,
    iters: int | None,
    gamma: float | None,
    alpha: float,
    eot: int,
    draws: int | None,
    seed: int,
    batch_size: int,
    examples: int,
    report_dir: Path | None,
    device: str,
    progress: bool,
) -> None:
    from harden._io import write_json
    from harden.attacks import create_patch_attack, is_randomised
    from harden.attacks.base import draws_default
    from harden.attacks.patch import PatchMask
    from harden.attacks.patch_attack import DEFAULT_STEPS
    from harden.attacks.patch_evaluate import evaluate_patch_attacks
    from harden.visualize import palette_for

    mask = PatchMask(patch, location, seed)
    names = [a.strip() for a in attack_spec.split(",") if a.strip()]
    steps = iters or DEFAULT_STEPS
    attacks = [create_patch_attack(n, steps=steps, gamma=gamma, alpha=alpha, eot=eot, seed=seed) for n in names]
    randomised = is_randomised(model)
    draws = draws_default(randomised, draws)
    evaluation = evaluate_patch_attacks(
        model, dataset, attacks, mask, target, stripes=stripes, draws=draws, seed=seed, batch_size=batch_size,
        device=device, examples=examples, progress=progress and sys.stderr.isatty(),
    )  # fmt: skip
    rows = evaluation.rows()
    click.echo(f"{model_config.name} — {patch}×{patch} patch at {location}, target {target}, "
               f"{evaluation.images} images, {draws} draw(s){', EOT ' + str(eot) if eot > 1 else ''}")  # fmt: skip
    click.echo(f"{'attack':<16}{'targeted mIoU ↓':>17}{'mIoU':>9}{'pAcc outside':>14}{'seconds':>10}")
    for row in rows:
        click.echo(f"{row['attack']:<16}{_fmt(row['targeted_miou']):>17}{_fmt(row['miou']):>9}"
                   f"{_fmt(row['pixel_accuracy_outside']):>14}{row['seconds']:>10.1f}")  # fmt: skip
    checks = evaluation.checks()
    for check in checks:
        click.echo(f"  [{check.status}] {check.name}: {check.detail}")
    out = report_dir or run_dir / "patch-attack"
    summary = {
        "schema": PATCH_SCHEMA,
        "run_dir": str(run_dir), "model": model_config.name, "ram": model_config.ram, "patch": patch,
        "location": location, "target": target, "stripes": stripes if target == "strip" else None,
        "iters": steps, "gamma": gamma, "alpha": alpha, "eot": eot, "draws": draws, "seed": seed,
        "images": evaluation.images, "worst_over_draws": True,
        "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows],
        "checks": [c.to_dict() for c in checks], "sound": all(c.status == "pass" for c in checks),
    }  # fmt: skip
    write_json(out / "patch_attack.json", summary)
    written = [out / "patch_attack.json"]
    if examples and attacks:
        crafted = [r for r in rows if r["attack"] not in ("clean", "random-patch")]
        strongest = max(crafted, key=lambda r: _key(r, target))
        _save_examples(model, evaluation, strongest["attack"], out / "examples.png",
                       palette_for(dataset.name, dataset.num_classes))  # fmt: skip
        written.append(out / "examples.png")
    click.echo("wrote " + ", ".join(str(p) for p in written))
    if not summary["sound"]:
        from harden.cli import Failed

        raise Failed("a patch-attack sanity check failed (see above): these numbers cannot be trusted")


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def _key(row: dict[str, Any], target: str) -> float:
    """Strength of an attack: targeted mIoU reached, or (untargeted) accuracy destroyed."""
    return row["targeted_miou"] if target != "none" else -row["pixel_accuracy_outside"]


def _save_examples(model: torch.nn.Module, evaluation: Any, attack: str, path: Path, palette: np.ndarray) -> None:
    """Rows of: adversarial image (patch outlined), target, clean prediction, adversarial prediction, labels."""
    import matplotlib.pyplot as plt
    import torch

    from harden._io import atomic_path
    from harden.attacks.evaluate import DRAW_SEED
    from harden.ram import fixed_rad_seed
    from harden.visualize import colorize, panel_figure

    kept = evaluation.examples
    device = next(model.parameters()).device
    with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
        clean = model(kept["images"].to(device)).argmax(1).cpu()
        adversarial = model(kept[attack].to(device)).argmax(1).cpu()
    rows = []
    for i in range(kept["images"].shape[0]):
        image = kept[attack][i].permute(1, 2, 0).numpy().copy()
        edge = _outline(kept["mask"][i, 0].numpy())
        image[edge] = (1.0, 0.0, 1.0)  # magenta frame around the patch
        rows.append((image, colorize(kept["targets"][i], palette), colorize(clean[i], palette),
                     colorize(adversarial[i], palette), colorize(kept["labels"][i], palette)))  # fmt: skip
    titles = (f"adversarial ({attack})", f"target ({evaluation.target})", "clean prediction",
              "adversarial prediction", "labels")  # fmt: skip
    fig = panel_figure(rows, titles)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels just outside the patch."""
    import numpy as np

    inside = mask > 0.5
    grown = np.zeros_like(inside)
    grown[1:, :] |= inside[:-1, :]
    grown[:-1, :] |= inside[1:, :]
    grown[:, 1:] |= inside[:, :-1]
    grown[:, :-1] |= inside[:, 1:]
    return grown & ~inside
