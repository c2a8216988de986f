"""RP-PGD: region-and-prototype PGD (rp-pgd.md §3).

Pixels fall into three regions that are tracked over the iterations (Definitions 1–3):
True (correct on the clean image and at every iterate so far), Boundary (correct on the clean
image but wrong at some iterate — it stays Boundary even if it flips back) and False (wrong on
the clean image). The region loss (eq. 3) weights the pixel CE by λ₁ = (2N − i)/2N on True,
λ₂ = (i − 1)/2N on Boundary and λ₃ = 1/2N on False (eq. 4) at iteration i of N. The prototype
loss (eqs. 5–6) averages the decoder features of each class over the True region and
maximises the cosine similarity between the prototypes of different classes. The attack
ascends β·L_R + (1 − β)·L_P with β = 0.75 (eq. 7).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.attacks.base import Attack, check_logits
from harden.attacks.losses import cross_entropy, image_loss, is_top
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError


def prototype_similarity(features: torch.Tensor, labels: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Eq. (6) per image: Σ_{i≠j} cos(P_i, P_j) / C(N_P, 2) over the classes present in `region`.

    features: (B, C, h, w); labels: (B, H, W) class ids (no ignore value); region: (B, H, W) bool.
    Labels and region are resized to the feature map by nearest neighbour. (B,); 0 for an image
    with fewer than two classes in the region.
    """
    size = features.shape[-2:]
    labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    region = F.interpolate(region[:, None].float(), size=size, mode="nearest")[:, 0]
    num_classes = int(labels.max()) + 1
    members = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).flatten(2) * region.flatten(1)[:, None]  # (B, K, hw)
    counts = members.sum(2)  # (B, K)
    prototypes = members @ features.flatten(2).transpose(1, 2) / counts.clamp_min(1)[..., None]  # (B, K, C), eq. 5
    unit = F.normalize(prototypes, dim=2)
    cosine = unit @ unit.transpose(1, 2)  # (B, K, K)
    present = (counts > 0).float()
    pairs = present[:, :, None] * present[:, None, :] * (1 - torch.eye(num_classes, device=features.device))
    n = present.sum(1)
    combinations = (n * (n - 1) / 2).clamp_min(1)
    return (cosine * pairs).flatten(1).sum(1) / combinations


class RPPGD(Attack):
    """Args: see `Attack`; beta: β of eq. (7); step_factor: α = step_factor · ε / steps;
    random_start: start from a uniform point of the ball (the PGD paradigm the paper builds on)."""

    name = "rppgd"
    default_steps = 20

    def __init__(
        self,
        threat: ThreatModel,
        *,
        beta: float = 0.75,
        step_factor: float = 2.5,
        random_start: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(threat, **common)
        if not 0 <= beta <= 1:
            raise InputError(f"rppgd: β must be in [0, 1], got {beta}")
        self.beta = beta
        self.step_size = step_factor * threat.eps / self.steps
        self.random_start = random_start

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        forward_with_features = getattr(model, "forward_with_features", None)
        if forward_with_features is None:
            raise InputError("rppgd needs decoder features: use a harden registry model (forward_with_features)")
        valid = labels != IGNORE_INDEX
        safe_labels = labels.where(valid, torch.zeros_like(labels))
        false_region = (self.predict(model, images).argmax(1) != labels) & valid
        boundary = torch.zeros_like(false_region)
        n = self.steps
        x = self.threat.random_start(images) if self.random_start else images.clone()
        for i in range(1, n + 1):
            true_region = valid & ~false_region & ~boundary
            weights = (
                (2 * n - i) / (2 * n) * true_region + (i - 1) / (2 * n) * boundary + 1 / (2 * n) * false_region
            )  # eq. (4)

            def objective(
                x_var: torch.Tensor, weights: torch.Tensor = weights, true_region: torch.Tensor = true_region
            ) -> tuple[torch.Tensor, torch.Tensor]:
                logits, features = forward_with_features(x_var)
                checked = check_logits(logits, x_var)
                region_loss = image_loss(weights * cross_entropy(checked, labels), labels)  # eq. (3)
                proto_loss = prototype_similarity(features, safe_labels, true_region)  # eq. (6)
                return self.beta * region_loss + (1 - self.beta) * proto_loss, checked

            _, logits, grad = self.loss_and_grad(objective, x, labels)
            boundary |= ~is_top(logits, safe_labels) & valid & ~false_region
            x = self.threat.project(x + self.step_size * self.threat.steepest_step(grad), images)
        return x
