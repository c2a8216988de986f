"""The projected-gradient family: FGSM, FGSM II, I-FGSM/BIM, iterative FGSM II, PGD, SegPGD, CosPGD.

All are one loop, x ← Π(x + α · step(∇ₓ L)), differing in the loss, the start and the step size:

| attack   | source                         | loss            | start  | α              |
|----------|--------------------------------|-----------------|--------|----------------|
| FGSM     | Goodfellow et al.; Arnab eq. 3 | CE              | clean  | ε, one step    |
| FGSM II  | Kurakin et al.; Arnab eq. 4    | −CE to y_ll     | clean  | ε, one step    |
| BIM      | Kurakin et al.; Arnab eq. 5    | CE              | clean  | 1.25 ε / steps |
| BIM II   | Kurakin et al.; Arnab eq. 6    | −CE to y_ll     | clean  | 1.25 ε / steps |
| PGD      | Madry et al.                   | CE              | random | 2.5 ε / steps  |
| SegPGD   | Gu et al.                      | balanced CE     | random | 2.5 ε / steps  |
| CosPGD   | Agnihotri & Keuper             | cosine-weighted | random | 2.5 ε / steps  |

y_ll is the least likely class of each pixel on the clean image, chosen once (Kurakin et al.).
BIM's default iteration count is Kurakin's min(ε + 4, ⌈1.25 ε⌉) in grey levels; with
α = 1.25 ε / steps that is Arnab et al.'s α = 1 grey level at ε = 4 and 8.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harden.attacks.base import Attack, checked_logits
from harden.attacks.losses import LOSSES, image_loss
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX


class PGD(Attack):
    """Projected gradient ascent on a pixel loss.

    Args:
        threat, steps, eot, allow_random, seed: see `Attack`.
        loss: a key of `LOSSES`.
        step_size: α; None means `step_factor · ε / steps`.
        step_factor: see step_size.
        random_start: start from a uniform point of the ball instead of the clean image.
        least_likely: targeted towards each pixel's least likely clean class (FGSM II / BIM II).
    """

    name = "pgd"
    default_steps = 20

    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss: str = "ce",
        step_size: float | None = None,
        step_factor: float = 2.5,
        random_start: bool = True,
        least_likely: bool = False,
        name: str | None = None,
        **common: Any,
    ) -> None:
        if name is not None:
            self.name = name
        super().__init__(threat, **common)
        self.loss = LOSSES[loss]
        self.step_size = step_factor * threat.eps / self.steps if step_size is None else step_size
        self.random_start = random_start
        self.least_likely = least_likely

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target, sign = labels, 1.0
        if self.least_likely:  # descend the loss towards the least likely class instead
            least = self.predict(model, images).argmin(1)
            target, sign = least.where(labels != IGNORE_INDEX, labels), -1.0
        x = self.threat.random_start(images) if self.random_start else images.clone()
        for step in range(self.steps):
            progress = step / self.steps

            def objective(x_var: torch.Tensor, progress: float = progress) -> tuple[torch.Tensor, torch.Tensor]:
                logits = checked_logits(model, x_var)
                return sign * image_loss(self.loss(logits, target, progress), target), logits

            _, _, grad = self.loss_and_grad(objective, x, labels)
            x = self.threat.project(x + self.step_size * self.threat.steepest_step(grad), images)
        return x


def kurakin_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count min(ε + 4, ⌈1.25 ε⌉), ε in grey levels; at least 1."""
    levels = eps * 255
    return max(1, int(min(levels + 4, math.ceil(1.25 * levels - 1e-9))))
