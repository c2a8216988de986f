"""Effective receptive field (RAM paper §3.1, eq. 1; Luo et al. 2016): how far the prediction at
the image centre reaches into the input.

For each image, the gradient of the centre pixel's output summed over classes is taken with
respect to the input, its magnitude summed over the colour channels, and the maps are averaged
over images. The paper writes eq. 1 with class PROBABILITIES, whose sum over classes is always 1,
so that gradient is identically zero; like Luo et al. this uses the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harden.data import SegmentationDataset
from harden.errors import InputError
from harden.ram import fixed_rad_seed


@dataclass(frozen=True)
class ReceptiveField:
    gradient: np.ndarray  # (H, W) mean |∂ Σ_c logit_c(centre) / ∂x| over images, summed over RGB
    images: int

    def radius(self, share: float) -> float:
        """Radius in pixels (from the centre) of the smallest disc holding `share` of the gradient mass."""
        height, width = self.gradient.shape
        rows, cols = np.indices((height, width))
        distance = np.hypot(rows - height // 2, cols - width // 2).ravel()
        order = np.argsort(distance)
        mass = np.cumsum(self.gradient.ravel()[order])
        if mass[-1] <= 0:
            return float("nan")
        return float(distance[order][np.searchsorted(mass, share * mass[-1])])


def effective_receptive_field(model: nn.Module, dataset: SegmentationDataset, images: int = 16) -> ReceptiveField:
    if len(dataset) == 0:
        raise InputError("the dataset is empty: no images to average the receptive field over")
    count = min(images, len(dataset))
    total: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for index in range(count):
            image = dataset[index][0].unsqueeze(0).requires_grad_(True)
            with fixed_rad_seed(model, index):
                logits = model(image)
            height, width = logits.shape[-2:]
            (gradient,) = torch.autograd.grad(logits[0, :, height // 2, width // 2].sum(), image)
            magnitude = gradient[0].abs().sum(0)
            total = magnitude if total is None else total + magnitude
    finally:
        model.train(was_training)
    assert total is not None
    return ReceptiveField((total / count).numpy(), count)


def plot_field(field: ReceptiveField, model: str, path: Path) -> None:
    """The gradient mass as a log-scale heat map, titled with the 50 % and 90 % radii."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harden._io import atomic_path

    fig, ax = plt.subplots(figsize=(6.5, 5.2 * field.gradient.shape[0] / field.gradient.shape[1] + 1.0))
    shown = np.log10(field.gradient / max(float(field.gradient.max()), 1e-30) + 1e-6)
    picture = ax.imshow(shown, cmap="magma", vmin=-4, vmax=0)
    fig.colorbar(picture, ax=ax, fraction=0.046, label="log10 relative gradient")
    r50, r90 = field.radius(0.5), field.radius(0.9)
    ax.set_title(f"{model}: effective receptive field of the centre pixel\n"
                 f"50 % of the mass within {r50:.1f} px, 90 % within {r90:.1f} px ({field.images} images)",
                 fontsize=9)  # fmt: skip
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
