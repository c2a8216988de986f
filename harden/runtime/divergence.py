"""Divergence search: inputs where the deployed graph and its float32 reference disagree.

DIVA (Hong et al. 2021) attacks an adapted (quantised, pruned) model while keeping the original
right: it maximises p_original(y) − c·p_adapted(y). Per pixel, with y the reference's own clean
prediction, averaged over labelled pixels, and stepped with L∞ PGD. It finds
deployment-specific weaknesses — fp16 and int8 rounding, a missing or altered op — that an
attack on either model alone does not aim for. Both models see the same RAD seed in each draw,
so the disagreement measured is that of the deployment, not of two different masks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.attacks.base import Attack
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX
from harden.ram import fixed_rad_seed


class Divergence(Attack):
    """Args: reference: the float32 model; c: DIVA's weight of the deployed model's term.
    `perturb`'s model is the deployed twin (differentiable: graph or precision twin)."""

    name = "divergence"
    default_steps = 10

    def __init__(self, threat: ThreatModel, *, reference: nn.Module, c: float = 1.0, **common: Any) -> None:
        super().__init__(threat, **common)
        self.reference = reference
        self.c = c

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), fixed_rad_seed(self.reference, self.seed):
            target = self.reference(images).argmax(1)
        valid = labels != IGNORE_INDEX
        target = torch.where(valid, target, torch.full_like(target, IGNORE_INDEX))

        def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            seed = int(torch.randint(0, 2**62, ()))
            with fixed_rad_seed(self.reference, seed), fixed_rad_seed(model, seed):
                ref_logits, logits = self.reference(x), model(x)
            safe = target.where(valid, torch.zeros_like(target)).unsqueeze(1)
            gap = ref_logits.softmax(1).gather(1, safe) - self.c * logits.float().softmax(1).gather(1, safe)
            gap = gap.squeeze(1) * valid
            return gap.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1), logits

        step = 2.5 * self.threat.eps / self.steps
        x = self.threat.project(images + torch.empty_like(images).uniform_(-1, 1) * self.threat.eps, images)
        for _ in range(self.steps):
            _, _, grad = self.loss_and_grad(objective, x, labels)
            x = self.threat.project(x + step * grad.sign(), images)
        return x
