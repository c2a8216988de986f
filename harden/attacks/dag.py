"""DAG, Dense Adversary Generation (Xie et al. 2017), inside an Lp ball.

Every pixel n gets an adversarial label l'ₙ: a random wrong class (untargeted) or a target
class (targeted; by default the pixel's least likely clean class). Each iteration ascends
Σ_{n active} (z_{l'ₙ} − z_{lₙ}) over the pixels that are still "active" (untargeted: still
correct; targeted: not yet the target), with the step γ · r/‖r‖∞. Xie et al.'s DAG is
unbounded; here each iterate is projected into the threat model, so it is comparable with the
other attacks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.attacks.base import Attack, checked_logits
from harden.attacks.losses import is_top
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX


class DAG(Attack):
    """Args: see `Attack`; targeted: drive pixels to `target_class` (None: least likely class);
    gamma: step length in L∞ (None: 2.5 ε / steps)."""

    name = "dag"
    default_steps = 20

    def __init__(
        self,
        threat: ThreatModel,
        *,
        targeted: bool = False,
        target_class: int | None = None,
        gamma: float | None = None,
        name: str | None = None,
        **common: Any,
    ) -> None:
        if name is not None:
            self.name = name
        super().__init__(threat, **common)
        self.targeted = targeted
        self.target_class = target_class
        self.gamma = 2.5 * threat.eps / self.steps if gamma is None else gamma

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = labels != IGNORE_INDEX
        safe = labels.where(valid, torch.zeros_like(labels))
        clean_logits = self.predict(model, images)
        num_classes = clean_logits.shape[1]
        if self.targeted:
            if self.target_class is None:
                adversarial_labels = clean_logits.argmin(1)
            else:
                adversarial_labels = torch.full_like(labels, self.target_class)
        else:  # a random class other than the true one: true + U{1..K-1} mod K
            shift = torch.randint(1, num_classes, labels.shape, device="cpu").to(labels.device)
            adversarial_labels = (safe + shift) % num_classes
        x = images.clone()
        for _ in range(self.steps):

            def objective(x_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                logits = checked_logits(model, x_var)
                # active: pixels still to flip (not yet the target / still correct)
                unflipped = ~is_top(logits, adversarial_labels) if self.targeted else is_top(logits, safe)
                active = valid & unflipped
                z_adv = logits.gather(1, adversarial_labels.unsqueeze(1)).squeeze(1)
                z_true = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
                return (active.detach() * (z_adv - z_true)).flatten(1).sum(1), logits

            _, _, grad = self.loss_and_grad(objective, x, labels)
            step = grad / grad.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            if self.threat.norm == "l2":
                step = self.threat.steepest_step(grad)
            x = self.threat.project(x + self.gamma * step, images)
        return x
