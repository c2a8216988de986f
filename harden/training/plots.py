"""The training-curve plot: loss and validation metrics per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harden._io import atomic_path


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels: training loss, and validation mIoU / pixel accuracy, against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss")
    ax_val.plot(epochs, [r["val_miou"] for r in rows], marker="o", label="mIoU")
    ax_val.plot(epochs, [r["val_pixel_accuracy"] for r in rows], marker="s", label="pixel accuracy")
    ax_val.set(xlabel="epoch", ylim=(0, 1), title="validation")
    ax_val.legend(loc="lower right")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
