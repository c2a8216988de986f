"""Projected Adam (PAdam; Halmosi, Mohos & Jelasity, ECCV 2024, "Evaluating the Adversarial
Robustness of Semantic Segmentation: Trying Harder Pays Off").

Adam (with AMSGrad) ascends the pixel loss in the perturbation δ; after each step δ is clipped to
the ε-ball and the image box. Adam normalises each coordinate by its own gradient history, so
one learning rate works for every model and ε — the paper's "step-size-free" attack. Defaults are
the paper's: 200 iterations, learning rate 2/255, a uniform random start; the losses are
cross-entropy (PAdam-CE) and the cosine distance between the logits and the one-hot label
(PAdam-Cos). As every harden attack, the point returned is the one where the attacker had won
most pixels (the reference returns the last iterate; never stronger than this).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.attacks.base import Attack, checked_logits, unreached_per_image
from harden.attacks.losses import LOSSES, image_loss
from harden.attacks.threat import ThreatModel
from harden.attacks.worst_case import LowestPerImage
from harden.errors import InputError


class PAdam(Attack):
    """Args: see `Attack`; loss: a key of `LOSSES` ("ce" or "cosine" in the paper); lr: Adam's
    learning rate in [0, 1] pixel units (2/255 in the paper)."""

    name = "padam"
    default_steps = 200

    def __init__(
        self, threat: ThreatModel, *, loss: str = "ce", lr: float = 2 / 255, name: str | None = None, **common: Any
    ) -> None:
        if name is not None:
            self.name = name
        super().__init__(threat, **common)
        if threat.norm != "linf":
            raise InputError(f"{self.name} is implemented for L∞ only")
        if not 0 < lr <= 1:
            raise InputError(f"{self.name}: the learning rate must lie in (0, 1], got {lr}")
        self.loss = LOSSES[loss]
        self.lr = lr

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        delta = self.start_point(images) - images
        delta.requires_grad_(True)
        adam = torch.optim.Adam([delta], lr=self.lr, amsgrad=True, maximize=True)

        def objective(x_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = checked_logits(model, x_var)
            return image_loss(self.loss(logits, labels, 0.0), labels), logits

        most_won: LowestPerImage | None = None
        for _ in range(self.steps):
            x = (images + delta).detach()
            _, logits, grad = self.loss_and_grad(objective, x, labels)
            won = unreached_per_image(logits, labels, self.targeted)
            if most_won is None:
                most_won = LowestPerImage({"x": x.clone()}, won, replace_ties=True)
            else:
                most_won.offer(won, x=x)
            delta.grad = grad
            adam.step()
            with torch.no_grad():  # back into the ε-ball and the box
                delta.copy_(self.threat.project(images + delta, images) - images)
        x = (images + delta).detach()
        assert most_won is not None
        most_won.offer(unreached_per_image(self.predict(model, x), labels, self.targeted), x=x)
        return most_won["x"]
