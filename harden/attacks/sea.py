"""SEA, the Segmentation Ensemble Attack (Croce, Singh & Hein, §3.3).

Four red-ε APGD runs with the complementary losses Mask-CE, Bal-CE, JS and Mask-Sph; the
result is the worst case per image. As a plain attack (`SEA(...)(model, x, y)`) the worst case
is the member with the lowest pixel accuracy on each image; an evaluation asks `run_members`
for all four and also finds the worst-case assignment of members to images for mIoU
(`harden.attacks.evaluate.worst_case`), since mIoU is a dataset-level quantity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.attacks.apgd import APGD, REDUCED_RADIUS
from harden.attacks.base import Attack, AttackOutput, pixel_accuracy_per_image
from harden.attacks.threat import ThreatModel
from harden.attacks.worst_case import LowestPerImage

SEA_LOSSES = ("mask-ce", "bal-ce", "jsd", "mask-sph")


class SEA(Attack):
    """Args: see `Attack`; steps is per member (300 in the paper); losses: the members' losses."""

    name = "sea"
    default_steps = 300

    def __init__(self, threat: ThreatModel, *, losses: tuple[str, ...] = SEA_LOSSES, **common: Any) -> None:
        super().__init__(threat, **common)
        self.members = [
            APGD(
                threat,
                loss=loss,
                radii=REDUCED_RADIUS,
                name=f"sea/{loss}",
                steps=self.steps,
                eot=self.eot,
                allow_random=self.allow_random,
                seed=self.seed + i,
            )
            for i, loss in enumerate(losses)
        ]

    def run_members(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, AttackOutput]:
        return {member.name: member(model, images, labels) for member in self.members}

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        worst = LowestPerImage({"images": images})
        for output in self.run_members(model, images, labels).values():
            self._stats.add(output.gradients)
            worst.offer(pixel_accuracy_per_image(self.predict(model, output.images), labels), images=output.images)
        return worst["images"]
