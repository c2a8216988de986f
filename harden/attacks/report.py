"""What an evaluation reports: a JSON-friendly summary, a text table, curves and overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harden.attacks.checks import Check
from harden.attacks.evaluate import DRAW_SEED, Evaluation
from harden.attacks.threat import format_eps
from harden.ram import fixed_rad_seed

WORST = "worst case"

SCHEMA = "harden-attack-report-v1"


def summarise(evaluation: Evaluation, checks: list[Check], meta: dict[str, Any]) -> dict[str, Any]:
    """Rows per (attack, ε) with pAcc, mIoU and IoU ratio (Arnab et al. §3), the worst case per ε
    over all attacks, the sanity checks and whether the evaluation is sound."""
    clean_miou, clean_acc = evaluation.clean_scores()

    def row(attack: str, eps: float, kind: str, acc: float, miou: float, **extra: Any) -> dict[str, Any]:
        ratio = miou / clean_miou if clean_miou > 0 else float("nan")
        return {"attack": attack, "eps": eps, "eps_text": format_eps(eps), "kind": kind,
                "pixel_accuracy": acc, "miou": miou, "iou_ratio": ratio, **extra}  # fmt: skip

    rows = []
    for run in evaluation.runs:
        worst = run.worst()
        members = run.members()
        rows.append(
            row(
                run.attack,
                run.eps,
                run.kind,
                worst.pixel_accuracy,
                worst.miou,
                crafted_on=run.crafted_on,
                seconds=run.seconds,
                gradients={"images": run.gradients.images, "zero": run.gradients.zero, "nan": run.gradients.nan},
                members={n: {"pixel_accuracy": w.pixel_accuracy, "miou": w.miou} for n, w in members.items()}
                if len(members) > 1
                else {},
            )
        )
    for eps in evaluation.eps_values():
        overall = evaluation.worst_at(eps)
        assert overall is not None
        rows.append(row(WORST, eps, "all", overall.pixel_accuracy, overall.miou))
    return {
        "schema": SCHEMA,
        **meta,
        "images": evaluation.images,
        "draws": evaluation.draws,
        "clean": {"pixel_accuracy": clean_acc, "miou": clean_miou},
        "rows": rows,
        "checks": [c.to_dict() for c in checks],
        "sound": all(c.status != "fail" for c in checks),
    }


def row_label(row: dict[str, Any]) -> str:
    """The table and legend name of a row: "pgd", or "pgd[unaries]" when crafted on a surrogate."""
    return row["attack"] + (f"[{row['crafted_on']}]" if row.get("crafted_on") else "")


def format_table(summary: dict[str, Any]) -> str:
    clean = summary["clean"]
    lines = [
        f"{'attack':<16} {'ε':>7} {'pAcc':>7} {'mIoU':>7} {'IoU ratio':>9}",
        f"{'clean':<16} {'0':>7} {clean['pixel_accuracy']:>7.4f} {clean['miou']:>7.4f} {1.0:>9.3f}",
    ]
    for r in sorted(summary["rows"], key=lambda r: (r["eps"], r["attack"] == WORST)):
        scores = f"{r['pixel_accuracy']:>7.4f} {r['miou']:>7.4f} {r['iou_ratio']:>9.3f}"
        lines.append(f"{row_label(r):<16} {r['eps_text']:>7} {scores}")
        for name, m in r.get("members", {}).items():
            lines.append(f"{'  ' + name:<16} {r['eps_text']:>7} {m['pixel_accuracy']:>7.4f} {m['miou']:>7.4f}")
    lines.append("")
    lines.append("sanity checks (docs/design.md §6):")
    for c in summary["checks"]:
        lines.append(f"  [{c['status']:>4}] {c['name']:<17} {c['detail']}")
    lines.append("evaluation is SOUND" if summary["sound"] else "evaluation is NOT SOUND: a sanity check failed")
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """mIoU and pAcc against ε, one line per attack (and the worst case), clean at ε = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harden._io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    clean = summary["clean"]
    markers = "osv^D<>ph*"
    for n, attack in enumerate(dict.fromkeys(row_label(r) for r in summary["rows"])):
        rows = sorted((r for r in summary["rows"] if row_label(r) == attack), key=lambda r: r["eps"])
        eps = [0.0] + [r["eps"] * 255 for r in rows]
        # the worst case is a wide translucent band UNDER the attacks, so the attack that reaches
        # it (often PGD) stays visible on top of it
        style: dict[str, Any] = (
            {"color": "black", "linewidth": 7, "alpha": 0.25, "zorder": 1, "marker": None}
            if attack == WORST
            else {"marker": markers[n % len(markers)], "markersize": 5, "markerfacecolor": "none", "zorder": 3}
        )
        for ax, key in zip(axes, ("miou", "pixel_accuracy"), strict=True):
            ax.plot(eps, [clean[key]] + [r[key] if r[key] is not None else np.nan for r in rows], label=attack, **style)
    for ax, title in zip(axes, ("mIoU", "pixel accuracy"), strict=True):
        ax.set_xlabel("ε (grey levels of 255)")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"robustness of {summary.get('model', 'model')} ({summary['images']} images)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def save_overlays(evaluation: Evaluation, model: nn.Module, key: str, path: Path, palette: np.ndarray) -> None:
    """Rows of clean image | clean prediction | adversarial image | adversarial prediction | labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harden._io import atomic_path
    from harden.visualize import colorize, panel_figure

    images, labels, adversarial = evaluation.examples["images"], evaluation.examples["labels"], evaluation.examples[key]
    device = next(model.parameters()).device
    with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
        clean_pred = model(images.to(device)).argmax(1).cpu()
        adv_pred = model(adversarial.to(device)).argmax(1).cpu()
    attack, eps = key.rsplit("@", 1)
    titles = (
        "clean image",
        "clean prediction",
        f"adversarial ({attack}, ε = {format_eps(float(eps))})",
        "adversarial prediction",
        "labels",
    )
    rows = [
        (images[i].permute(1, 2, 0).numpy(), colorize(clean_pred[i], palette),
         adversarial[i].permute(1, 2, 0).numpy(), colorize(adv_pred[i], palette), colorize(labels[i], palette))
        for i in range(len(images))
    ]  # fmt: skip
    fig = panel_figure(rows, titles)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def write_attack_report(
    summary: dict[str, Any], evaluation: Evaluation, model: nn.Module, out: Path, *, examples: bool, palette: np.ndarray
) -> list[Path]:
    """attack.json, robustness.png and, with `examples`, examples.png: the images of the attack
    with the lowest mIoU at the largest ε. Returns the paths written."""
    from harden._io import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attack.json", summary)
    plot_curves(summary, out / "robustness.png")
    written = [out / "attack.json", out / "robustness.png"]
    if examples:
        largest = max(evaluation.eps_values())
        strongest = min((r for r in summary["rows"] if r["attack"] != WORST and r["eps"] == largest),
                        key=lambda r: r["miou"])  # fmt: skip
        crafted_on = f"[{strongest['crafted_on']}]" if strongest["crafted_on"] else ""
        save_overlays(evaluation, model, f"{strongest['attack']}@{largest}{crafted_on}", out / "examples.png", palette)
        written.append(out / "examples.png")
    return written
