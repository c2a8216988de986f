"""Pictures of segmentations: colour-coded label maps and image | truth | prediction panels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harden._io import atomic_path
from harden.data.classes import CITYSCAPES_PALETTE, IGNORE_INDEX, voc_palette


def palette_for(dataset_name: str, num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colours: the dataset's own palette where it has one; ignored pixels black."""
    if dataset_name in ("synthetic", "cityscapes"):
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    elif dataset_name == "voc":
        palette = voc_palette()
    else:  # a fixed, well-spread palette for any other class count
        palette = np.random.default_rng(0).integers(40, 256, size=(256, 3)).astype(np.uint8)
    palette[IGNORE_INDEX] = 0
    return palette


def colorize(label: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8."""
    return palette[label.cpu().numpy().clip(0, 255).astype(np.uint8)]


def panel_figure(rows: Sequence[Sequence[np.ndarray]], titles: tuple[str, ...], width: float = 15) -> Any:
    """A matplotlib figure with one row of panels (RGB arrays) per entry of `rows`, titled once
    on top; the caller saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(titles), figsize=(width, 2.2 * len(rows)), squeeze=False)
    for i, panels in enumerate(rows):
        for j, panel in enumerate(panels):
            axes[i, j].imshow(panel)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(titles[j], fontsize=8)
    fig.tight_layout()
    return fig


def save_examples(
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    path: Path,
    palette: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> None:
    """One row per image: the image, its ground truth and the prediction, titled, with a legend
    of the classes that appear (when `class_names` is given), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [
        (image.permute(1, 2, 0).cpu().numpy().clip(0, 1), colorize(label, palette), colorize(pred, palette))
        for image, label, pred in zip(images, labels, predictions, strict=True)
    ]
    fig = panel_figure(rows, ("image", "ground truth", "prediction"), width=9)
    if class_names:
        shown = sorted({int(c) for t in (labels, predictions) for c in t.unique() if 0 <= int(c) < len(class_names)})
        handles = [Patch(color="#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[c][:3])), label=class_names[c])
                   for c in shown]  # fmt: skip
        fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=7, frameon=False)
        fig.subplots_adjust(bottom=0.04 + 0.03 * math.ceil(len(handles) / 6))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
