"""The `strongest` preset: an adaptive ensemble of the strongest public attacks on segmentation.

Members (bench/attack_strength.py measures them against the public code): APGD on the losses of
both public SEA protocols — Croce et al.'s (class-balanced Mask-CE, Mask-CE, JS) and Halmosi et
al.'s four-loss one (Mask-CE, Bal-CE/SegPGD, JS, Mask-Sph), red-ε and at the full ε — and PAdam
on the cosine distance (Halmosi et al., ECCV 2024), 100 iterations each.

The budget is spent adaptively, in two ways:
- A member runs only on the images still standing — those on which some labelled pixel is still
  predicted correctly. An image with no correct pixel cannot lose pixel accuracy, and every
  class's true positives in it are already 0, so later members could not lower either figure
  through it. A skipped image keeps the worst image found so far as that member's candidate.
- A chained member continues from where the ensemble stands instead of a fresh random point:
  per image, the candidate that the batch's worst-case mIoU assignment chose so far
  (`worst_case`, the figure the gates use). A new loss from a point another loss reached goes
  further than both alone: on the bench's models the chain reached a lower worst case than the
  same members run independently. The last two members start fresh again, so the mIoU
  assignment also has candidates unlike the chain's to choose from (docs/attacks.md).
Every member still offers a candidate for every image, so the evaluation's worst case (per image
for pAcc, the assignment for mIoU) sees them all.
"""

from __future__ import annotations

from typing import Any, Final

import torch
from torch import nn

from harden.attacks.apgd import APGD, CONSTANT_RADIUS, REDUCED_RADIUS
from harden.attacks.base import Attack, AttackOutput, GradientStats, pixel_accuracy_per_image
from harden.attacks.padam import PAdam
from harden.attacks.threat import ThreatModel
from harden.attacks.worst_case import ImageCounts, LowestPerImage, worst_case

# (attack, loss, radius schedule, start), in the order they run. Two red-ε members explore:
# class-balanced Mask-CE from a random start (it spreads the budget over small classes, which the
# mIoU counts as much as large ones), then JS, which is given the ensemble's point but first
# searches at 2ε and so wanders off it. Four members continue the chain from the ensemble's worst
# point at the full ε (Mask-Sph, Mask-CE, PAdam-Cos, Bal-CE). The last two start FRESH, from a
# random point at the full ε (class-balanced Mask-CE, JS): the data-set mIoU is a worst case
# assigned per image over candidates, and candidates that all descend from one chain are too much
# alike for that assignment — with the two fresh members the mIoU worst case at segformer_tiny
# 8/255 fell from 0.0486 (all chained) to 0.0453 (docs/attacks.md). PAdam-CE and the red-ε
# Mask-CE and Mask-Sph members were left out: in the chain they never lowered the worst case.
CHAIN: Final = "chain"
FRESH: Final = "fresh"
MEMBERS: tuple[tuple[str, str, tuple[tuple[float, float], ...], str], ...] = (
    ("apgd", "mask-ce-bal", REDUCED_RADIUS, FRESH),
    ("apgd", "jsd", REDUCED_RADIUS, CHAIN),
    ("apgd", "mask-sph", CONSTANT_RADIUS, CHAIN),
    ("apgd", "mask-ce", CONSTANT_RADIUS, CHAIN),
    ("padam", "cosine", (), CHAIN),
    ("apgd", "bal-ce", CONSTANT_RADIUS, CHAIN),
    ("apgd", "mask-ce-bal", CONSTANT_RADIUS, FRESH),
    ("apgd", "jsd", CONSTANT_RADIUS, FRESH),
)


class Strongest(Attack):
    """Args: see `Attack`; steps: iterations of every member (None: 100, the budget at which
    bench/attack_strength.py compares the preset with the public ensembles, where each member
    of theirs also ran 100)."""

    name = "strongest"
    default_steps = 100

    def __init__(self, threat: ThreatModel, **common: Any) -> None:
        super().__init__(threat, **common)
        shared = {"eot": self.eot, "allow_random": self.allow_random}
        self.members: list[Attack] = []
        self.chained: list[bool] = [start == CHAIN for *_, start in MEMBERS]
        for i, (kind, loss, radii, start) in enumerate(MEMBERS):
            seed = self.seed + i
            if kind == "apgd":
                schedule = "red" if radii == REDUCED_RADIUS else "full"
                self.members.append(
                    APGD(
                        threat,
                        loss=loss,
                        radii=radii,
                        name=f"strongest/apgd-{loss}-{schedule}" + ("-fresh" if start == FRESH and i else ""),
                        steps=self.steps,
                        seed=seed,
                        **shared,
                    )
                )
            else:
                self.members.append(
                    PAdam(threat, loss=loss, name=f"strongest/padam-{loss}", steps=self.steps, seed=seed, **shared)
                )

    def run_members(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, AttackOutput]:
        """Every member's candidate for every image; members after the first run only on the
        images still standing, and a chained one starts from the ensemble's worst image so far
        (see the module's docstring)."""
        worst = LowestPerImage({"images": images}, self._accuracy(model, images, labels))
        outputs: dict[str, AttackOutput] = {}
        pool: list[tuple[torch.Tensor, ImageCounts]] = []  # every candidate so far, with its counts
        for member, chained in zip(self.members, self.chained, strict=True):
            standing = (worst.score > 0).nonzero().flatten()
            candidate = worst["images"].clone()
            gradients = GradientStats()
            if standing.numel() > 0:
                member.start_from = _chosen_by_miou(pool)[standing] if pool and chained else None
                try:
                    output = member(model, images[standing], labels[standing])
                finally:  # a later call of this member starts afresh, even after an error
                    member.start_from = None
                candidate[standing] = output.images
                gradients = output.gradients
                logits = self.predict(model, candidate)
                worst.offer(pixel_accuracy_per_image(logits, labels), images=candidate)
                pool.append((candidate, ImageCounts.from_predictions(logits.argmax(1), labels, logits.shape[1])))
            outputs[member.name] = AttackOutput(candidate, gradients)
        return outputs

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        worst = LowestPerImage({"images": images})
        for output in self.run_members(model, images, labels).values():
            self._stats.add(output.gradients)
            worst.offer(self._accuracy(model, output.images, labels), images=output.images)
        return worst["images"]

    def _accuracy(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pixel_accuracy_per_image(self.predict(model, images), labels)


def _chosen_by_miou(pool: list[tuple[torch.Tensor, ImageCounts]]) -> torch.Tensor:
    """Per image, the candidate the worst-case mIoU assignment over `pool` chose: (B, 3, H, W)."""
    choice = torch.from_numpy(worst_case([counts for _, counts in pool]).miou_choice)
    stacked = torch.stack([images for images, _ in pool])
    return stacked[choice.to(stacked.device), torch.arange(stacked.shape[1], device=stacked.device)]
