"""What the patch protocol reports: `patch_attack.json`, a text table and the examples figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harden.attacks.checks import Check
from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.patch_evaluate import CLEAN, RANDOM, PatchEvaluation
from harden.ram import fixed_rad_seed

PATCH_SCHEMA = "harden-patch-attack-report-v1"


def patch_summary(evaluation: PatchEvaluation, checks: list[Check], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: `meta` (the settings), one row per attack (worst over draws), the checks."""
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in evaluation.rows()]  # fmt: skip
    return {
        "schema": PATCH_SCHEMA, **meta, "images": evaluation.images, "worst_over_draws": True, "rows": rows,
        "checks": [c.to_dict() for c in checks], "sound": all(c.status == "pass" for c in checks),
    }  # fmt: skip


def format_patch_table(summary: dict[str, Any]) -> str:
    eot = f", EOT {summary['eot']}" if summary["eot"] > 1 else ""
    lines = [
        f"{summary['model']} — {summary['patch']}×{summary['patch']} patch at {summary['location']}, target "
        f"{summary['target']}, {summary['images']} images, {summary['draws']} draw(s){eot}",
        f"{'attack':<16}{'targeted mIoU ↓':>17}{'mIoU':>9}{'pAcc outside':>14}{'seconds':>10}",
    ]
    for row in summary["rows"]:
        lines.append(f"{row['attack']:<16}{_fmt(row['targeted_miou']):>17}{_fmt(row['miou']):>9}"
                     f"{_fmt(row['pixel_accuracy_outside']):>14}{row['seconds']:>10.1f}")  # fmt: skip
    lines += [f"  [{c['status']}] {c['name']}: {c['detail']}" for c in summary["checks"]]
    return "\n".join(lines)


def write_patch_report(
    summary: dict[str, Any], evaluation: PatchEvaluation, model: nn.Module, out: Path, palette: np.ndarray
) -> list[Path]:
    """patch_attack.json and, when examples were kept, examples.png under the strongest attack."""
    from harden._io import write_json

    write_json(out / "patch_attack.json", summary)
    written = [out / "patch_attack.json"]
    crafted = [r for r in summary["rows"] if r["attack"] not in (CLEAN, RANDOM)]
    if crafted and len(evaluation.examples.get("images", ())) > 0:
        strongest = max(crafted, key=lambda r: _strength(r, summary["target"]))
        save_patch_examples(model, evaluation, strongest["attack"], out / "examples.png", palette)
        written.append(out / "examples.png")
    return written


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.4f}"


def _strength(row: dict[str, Any], target: str) -> float:
    """Strength of an attack: targeted mIoU reached, or (untargeted) accuracy destroyed."""
    if target != "none":
        return row["targeted_miou"] if row["targeted_miou"] is not None else -math.inf
    return -row["pixel_accuracy_outside"] if row["pixel_accuracy_outside"] is not None else -math.inf


def save_patch_examples(model: nn.Module, evaluation: PatchEvaluation, attack: str, path: Path,
                        palette: np.ndarray) -> None:  # fmt: skip
    """Rows of: adversarial image (patch outlined), target, clean prediction, adversarial prediction, labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harden._io import atomic_path
    from harden.visualize import colorize, panel_figure

    kept = evaluation.examples
    device = next(model.parameters()).device
    with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
        clean = model(kept["images"].to(device)).argmax(1).cpu()
        adversarial = model(kept[attack].to(device)).argmax(1).cpu()
    rows = []
    for i in range(kept["images"].shape[0]):
        image = kept[attack][i].permute(1, 2, 0).numpy().copy()
        image[_outline(kept["mask"][i, 0].numpy())] = (1.0, 0.0, 1.0)  # magenta frame around the patch
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
    inside = mask > 0.5
    grown = np.zeros_like(inside)
    grown[1:, :] |= inside[:-1, :]
    grown[:-1, :] |= inside[1:, :]
    grown[:, 1:] |= inside[:, :-1]
    grown[:, :-1] |= inside[:, 1:]
    return grown & ~inside
