"""Transferability of adversarial perturbations across input scales (Arnab et al. §6.2–6.3, table 1).

One network is run at each single scale (the image resized to 50 %, 75 %, 100 % …) and at all
of them fused (`MultiScale`). Every attack crafts perturbations on each of these *sources*
(white-box) and the perturbed full-resolution images are evaluated by every *target*: the
same scales, the multiscale model and, optionally, other trained models. A cell is the target's
IoU ratio (adversarial mIoU / clean mIoU, §4) — lower means the perturbation hurt more; the
diagonal is the white-box attack, off-diagonals are transfer (black-box) attacks.

A randomised (RAD) target is predicted over several draws and the worst draw per image counts;
a randomised source is attacked with EOT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from harden.attacks import ThreatModel, create_attack, is_randomised
from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.threat import format_eps
from harden.attacks.worst_case import ImageCounts, worst_case
from harden.data import SegmentationDataset, collate_pad
from harden.models.base import SegmentationModel
from harden.models.compose import compose
from harden.models.multiscale import Fusion
from harden.ram import fixed_rad_seed

MULTISCALE = "multiscale"


def scale_name(scale: float) -> str:
    return f"{scale * 100:g}%"


@dataclass
class Cell:
    """A target's scores on the perturbations of one source, attack and ε."""

    source: str
    target: str
    attack: str
    eps: float
    pixel_accuracy: float
    miou: float
    iou_ratio: float


@dataclass
class TransferScalesResult:
    sources: list[str]
    targets: list[str]
    clean: dict[str, dict[str, float]]  # target → {"miou", "pixel_accuracy"}
    cells: list[Cell] = field(default_factory=list)

    def cell(self, source: str, target: str, attack: str, eps: float) -> Cell:
        return next(c for c in self.cells if (c.source, c.target, c.attack, c.eps) == (source, target, attack, eps))

    def settings(self) -> list[tuple[str, float]]:
        return list(dict.fromkeys((c.attack, c.eps) for c in self.cells))

    def observations(self) -> list[dict[str, Any]]:
        """Whether the paper's §6 observations hold here, one entry per (attack, ε) and claim."""
        found = []
        singles = [s for s in self.sources if s != MULTISCALE]
        full = scale_name(1.0) if scale_name(1.0) in singles else singles[-1]
        for attack, eps in self.settings():
            ratio = {(c.source, c.target): c.iou_ratio for c in self.cells if (c.attack, c.eps) == (attack, eps)}
            setting = f"{attack} ε={format_eps(eps)}"
            white_multi, white_full = ratio[(MULTISCALE, MULTISCALE)], ratio[(full, full)]
            found.append({
                "setting": setting, "claim": "the multiscale model is more robust to white-box attacks than "
                f"the {full} one", "holds": white_multi > white_full,
                "evidence": f"white-box IoU ratio multiscale {white_multi:.3f} vs {full} {white_full:.3f}",
            })  # fmt: skip
            diagonal = [ratio[(s, s)] for s in singles]
            across = [ratio[(s, t)] for s in singles for t in singles if s != t]
            if across:
                mean_diagonal, mean_across = sum(diagonal) / len(diagonal), sum(across) / len(across)
                found.append({
                    "setting": setting, "claim": "single-scale perturbations transfer poorly to other scales",
                    "holds": mean_across > mean_diagonal + 0.05,
                    "evidence": f"mean IoU ratio white-box {mean_diagonal:.3f} vs across scales {mean_across:.3f}",
                })  # fmt: skip
            others = [t for t in self.targets if t != MULTISCALE]
            best = [
                t for t in others if min(self.sources, key=lambda s: ratio[(s, t)] if s != t else 9.0) == MULTISCALE
            ]
            found.append({
                "setting": setting, "claim": "perturbations from the multiscale model transfer best",
                "holds": len(best) * 2 > len(others),
                "evidence": f"multiscale is the strongest non-white-box source on {len(best)} of {len(others)} "
                f"targets ({', '.join(best) or 'none'})",
            })  # fmt: skip
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "targets": self.targets,
            "clean": self.clean,
            "cells": [vars(c) for c in self.cells],
            "observations": self.observations(),
        }


def transfer_scales(
    network: SegmentationModel,
    dataset: SegmentationDataset,
    *,
    scales: tuple[float, ...] = (0.5, 0.75, 1.0),
    fusion: Fusion = "max",
    others: Mapping[str, nn.Module] | None = None,
    attacks: tuple[str, ...] = ("fgsm", "bim-ll"),
    eps_values: tuple[float, ...] = (8 / 255,),
    steps: int | None = None,
    eot: int = 1,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> TransferScalesResult:
    """Table 1 of Arnab et al. for `network` (a single-scale registry network) on `dataset`.

    Args:
        others: extra targets (name → model), evaluated on every source's perturbations.
        attacks, eps_values: registry attacks and L∞ radii (the paper: FGSM and Iterative FGSM II at 8).
        eot, draws: EOT draws per gradient and evaluation draws, for randomised (RAD) models.
    """
    sources: dict[str, nn.Module] = {scale_name(s): compose(network, scales=(s,)) for s in scales}
    sources[MULTISCALE] = compose(network, scales=scales, fusion=fusion)
    targets: dict[str, nn.Module] = {**sources, **(others or {})}
    for model in targets.values():
        model.eval()
    counts: dict[tuple[str, str, str, float], list[ImageCounts]] = {}
    clean: dict[str, list[ImageCounts]] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pad)
    total = len(loader) * len(attacks) * len(eps_values) * len(sources)
    bar = tqdm(total=total, desc="transfer-scales", unit="craft", disable=not progress)
    try:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            for target, model in targets.items():
                _accumulate(clean, target, _predict(model, images, labels, dataset.num_classes, draws))
            for attack_name in attacks:
                for eps in eps_values:
                    for source, crafting in sources.items():
                        attack = create_attack(
                            attack_name, ThreatModel(eps), steps=steps, eot=eot if is_randomised(crafting) else 1,
                            seed=seed,
                        )  # fmt: skip
                        adversarial = attack(crafting, images, labels).images
                        for target, model in targets.items():
                            predicted = _predict(model, adversarial, labels, dataset.num_classes, draws)
                            _accumulate(counts, (source, target, attack_name, eps), predicted)
                        bar.update()
    finally:
        bar.close()
    clean_scores = {}
    for target, per_draw in clean.items():
        worst = worst_case(per_draw)
        clean_scores[target] = {"miou": worst.miou, "pixel_accuracy": worst.pixel_accuracy}
    result = TransferScalesResult(list(sources), list(targets), clean_scores)
    for (source, target, attack_name, eps), per_draw in counts.items():
        worst = worst_case(per_draw)
        clean_miou = clean_scores[target]["miou"]
        ratio = worst.miou / clean_miou if clean_miou > 0 else float("nan")
        result.cells.append(Cell(source, target, attack_name, eps, worst.pixel_accuracy, worst.miou, ratio))
    return result


def _predict(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, draws: int
) -> list[ImageCounts]:
    """Counts of each evaluation draw (one for a deterministic model)."""
    draws = draws if is_randomised(model) else 1
    out = []
    with torch.no_grad():
        for d in range(draws):
            with fixed_rad_seed(model, DRAW_SEED + d):
                out.append(ImageCounts.from_predictions(model(images).argmax(1), labels, num_classes))
    return out


def _accumulate(store: dict[Any, list[ImageCounts]], key: Any, per_draw: list[ImageCounts]) -> None:
    if key not in store:
        store[key] = per_draw
    else:
        store[key] = [old.extend(new) for old, new in zip(store[key], per_draw, strict=True)]


def format_tables(result: TransferScalesResult) -> str:
    """One table per (attack, ε) in the layout of table 1: rows = evaluated network, columns = source
    of the perturbation, cells = IoU ratio in %, white-box cells in [brackets]."""
    lines = []
    width = max(len(t) for t in result.targets) + 2
    for attack, eps in result.settings():
        lines.append(f"{attack} (ε = {format_eps(eps)}): IoU ratio % of the evaluated network (rows) "
                     "on perturbations crafted on each column; [white-box]")  # fmt: skip
        lines.append(f"{'evaluated':<{width}}" + "".join(f"{s:>13}" for s in result.sources))
        for target in result.targets:
            cells = []
            for source in result.sources:
                value = 100 * result.cell(source, target, attack, eps).iou_ratio
                cells.append(f"{f'[{value:.1f}]' if source == target else f'{value:.1f}':>13}")
            lines.append(f"{target:<{width}}" + "".join(cells))
        lines.append("")
    lines.append("observations of Arnab et al. §6, here:")
    for o in result.observations():
        lines.append(
            f"  [{'holds' if o['holds'] else 'does not hold':>13}] {o['setting']}: {o['claim']} — {o['evidence']}"
        )
    return "\n".join(lines)


def plot_tables(result: TransferScalesResult, path: Any) -> None:
    """One heat map per (attack, ε): IoU ratio of each evaluated network (rows) per source (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from harden._io import atomic_path

    settings = result.settings()
    fig, axes = plt.subplots(
        1,
        len(settings),
        figsize=(1.3 * len(result.sources) * len(settings) + 2, 0.5 * len(result.targets) + 2),
        squeeze=False,
    )
    for ax, (attack, eps) in zip(axes[0], settings, strict=True):
        grid = np.array([[result.cell(s, t, attack, eps).iou_ratio for s in result.sources] for t in result.targets])
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1)
        for i, target in enumerate(result.targets):
            for j, source in enumerate(result.sources):
                text = f"{100 * grid[i, j]:.0f}"
                ax.text(j, i, f"[{text}]" if source == target else text, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(result.sources)), result.sources, rotation=30)
        ax.set_yticks(range(len(result.targets)), result.targets)
        ax.set_xlabel("perturbation crafted on")
        ax.set_title(f"{attack}, ε = {format_eps(eps)}")
    axes[0][0].set_ylabel("evaluated network")
    fig.suptitle("IoU ratio % (lower = perturbation hurts more; [white-box])")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
