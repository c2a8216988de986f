"""AutoAttack inside the patch (RAM paper A.8): APGD-CE and Square with the patch as threat.

APGD runs `steps` iterations and Square 10 × `steps` queries, its windows inside the patch;
per image the result with fewer pixels left to win is kept: still correct (untargeted) or not
yet at their target (targeted: APGD descends the cross-entropy to the target, Square the
target's margin).
"""

from __future__ import annotations

import torch
from torch import nn

from harden.attacks.apgd import APGD
from harden.attacks.base import unreached_per_image
from harden.attacks.patch import PatchThreat
from harden.attacks.patch_attack import PatchAttack
from harden.attacks.square import Square
from harden.attacks.worst_case import LowestPerImage
from harden.ram import fixed_rad_seed


class PatchAutoAttack(PatchAttack):
    name = "autoattack"

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        threat, targeted = PatchThreat(1.0, mask=self._mask), self._targets is not None
        goal = self._targets if self._targets is not None else labels
        best = LowestPerImage({"images": images})
        apgd = APGD(threat, steps=self.steps, eot=self.eot, seed=self.seed, targeted=targeted, name="apgd-ce")
        square = Square(threat, steps=10 * self.steps, eot=self.eot, seed=self.seed, targeted=targeted)
        for attack in (apgd, square):
            output = attack(model, images, goal)
            self._stats.add(output.gradients)
            with torch.no_grad(), fixed_rad_seed(model, self.seed):
                left = unreached_per_image(model(output.images), goal, targeted)
            best.offer(left, images=output.images)
        return best["images"]
