"""Patch-attack evaluation over a dataset: the RAM paper's protocol (§5.1, tables 3 and 8).

For every batch, the targets (Permute, Strip or none) are drawn once, seeded; every attack
crafts a patch per image; the adversarial images are predicted over `draws` RAD draws. Per
attack and draw it accumulates confusion matrices of prediction vs target (targeted mIoU, lower
= more robust) and prediction vs ground truth (untargeted mIoU), and the correct / counted
pixels outside the patch (eq. 21). A randomised model's figure is its worst draw: the highest
targeted mIoU, the lowest mIoU and pAcc.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from harden.attacks.checks import Check
from harden.attacks.evaluate import DRAW_SEED, keep_first
from harden.attacks.patch import PatchMask
from harden.attacks.patch_attack import PatchAttack
from harden.attacks.targets import counts_outside, permute_targets, strip_targets
from harden.data import SegmentationDataset, collate_pad
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.metrics import ConfusionMatrix
from harden.ram import fixed_rad_seed

TARGETS: Final = ("permute", "strip", "none")
CLEAN: Final = "clean"
RANDOM: Final = "random-patch"  # uniform noise in the patch: the floor every attack must beat


@dataclass
class _Draw:
    """One attack (or the clean images), one RAD draw, over the images seen so far."""

    targeted: ConfusionMatrix
    untargeted: ConfusionMatrix
    correct_outside: int = 0
    outside: int = 0

    def add(self, predictions: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        self.targeted.update(predictions, targets)
        self.untargeted.update(predictions, labels)
        correct, outside = counts_outside(predictions, labels, mask)
        self.correct_outside += correct
        self.outside += outside

    def scores(self) -> dict[str, float]:
        return {
            "targeted_miou": self.targeted.miou(),
            "miou": self.untargeted.miou(),
            "pixel_accuracy_outside": self.correct_outside / self.outside if self.outside else float("nan"),
        }


@dataclass
class PatchEvaluation:
    target: str
    patch: PatchMask
    images: int
    draws: int
    results: dict[str, list[_Draw]]  # attack (or "clean") → one per draw
    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # images, labels, targets, mask, <attack>
    leaked: dict[str, float] = field(default_factory=dict)  # attack → max |change| outside the patch

    def worst(self, attack: str) -> dict[str, float]:
        """The worst draw of each metric (highest targeted mIoU, lowest mIoU and pAcc)."""
        per_draw = [d.scores() for d in self.results[attack]]
        return {
            "targeted_miou": max(s["targeted_miou"] for s in per_draw),
            "miou": min(s["miou"] for s in per_draw),
            "pixel_accuracy_outside": min(s["pixel_accuracy_outside"] for s in per_draw),
        }

    def checks(self) -> list[Check]:
        """The sanity checks of the patch protocol: attacks change only the patch, and every
        attack does at least as well as random noise in the patch (else its optimisation failed:
        a broken gradient, a step too small for the iterations)."""
        leaked = {name: value for name, value in self.leaked.items() if value > 0}
        checks = [
            Check("patch-confined", "fail" if leaked else "pass",
                  f"pixels outside the patch changed by {leaked}" if leaked else "no attack changed a pixel outside "
                  "the patch"),
        ]  # fmt: skip
        floor = self.worst(RANDOM)
        metric, sign = ("targeted_miou", 1) if self.target != "none" else ("pixel_accuracy_outside", -1)
        weaker = [name for name in self.results if name not in (CLEAN, RANDOM)
                  if sign * (self.worst(name)[metric] - floor[metric]) < -1e-4]  # fmt: skip
        checks.append(Check(
            "beats-random-patch", "fail" if weaker else "pass",
            f"weaker than random noise in the patch on {metric}: {', '.join(weaker)}" if weaker
            else f"every attack at least as strong as random noise in the patch on {metric}",
        ))  # fmt: skip
        return checks

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"attack": name, **self.worst(name), "seconds": round(self.seconds.get(name, 0.0), 2)}
            for name in self.results
        ]


def make_targets(
    target: str, labels: torch.Tensor, num_classes: int, *, stripes: int, seed: int
) -> torch.Tensor | None:
    if target == "permute":
        return permute_targets(labels, num_classes, seed)
    if target == "strip":
        return strip_targets(labels, num_classes, stripes, seed)
    if target == "none":
        return None
    raise InputError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")


def evaluate_patch_attacks(
    model: nn.Module,
    dataset: SegmentationDataset,
    attacks: list[PatchAttack],
    patch: PatchMask,
    target: str = "permute",
    *,
    stripes: int = 4,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    examples: int = 4,
    progress: bool = False,
) -> PatchEvaluation:
    """Every attack on every image of `dataset` (see the module docstring)."""
    if len(dataset) == 0:
        raise InputError("the dataset is empty: nothing to attack")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    k = dataset.num_classes
    names = [CLEAN, RANDOM, *(a.name for a in attacks)]
    results = {name: [_Draw(ConfusionMatrix(k), ConfusionMatrix(k)) for _ in range(draws)] for name in names}
    seconds: dict[str, float] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    leaked: dict[str, float] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pad)
    bar = tqdm(total=len(loader) * len(attacks), desc="patch attack", unit="run", disable=not progress)
    try:
        for index, (images, labels) in enumerate(loader):
            images, labels = images.to(device), labels.to(device)
            targets = make_targets(target, labels, k, stripes=stripes, seed=seed + index)
            scored = targets if targets is not None else torch.full_like(labels, IGNORE_INDEX)
            batch, _, height, width = images.shape
            mask = PatchMask(patch.size, patch.location, patch.seed + index)(batch, height, width, images.device)
            _predict(model, images, draws, results[CLEAN], labels, scored, mask)
            generator = torch.Generator().manual_seed(seed + index)
            noise = torch.rand(images.shape, generator=generator).to(images.device)
            _predict(model, images * (1 - mask) + noise * mask, draws, results[RANDOM], labels, scored, mask)
            for key, tensor in (("images", images), ("labels", labels), ("targets", scored), ("mask", mask)):
                keep_first(kept, key, tensor, examples)
            for attack in attacks:
                bar.set_postfix_str(attack.name)
                start = time.perf_counter()
                adversarial = attack(model, images, labels, mask=mask, targets=targets).images
                seconds[attack.name] = seconds.get(attack.name, 0.0) + time.perf_counter() - start
                outside = float(((adversarial - images).abs() * (1 - mask)).max())
                leaked[attack.name] = max(leaked.get(attack.name, 0.0), outside)
                _predict(model, adversarial, draws, results[attack.name], labels, scored, mask)
                keep_first(kept, attack.name, adversarial, examples)
                bar.update()
    finally:
        bar.close()
    return PatchEvaluation(target, patch, len(dataset), draws, results, seconds,
                           {k: torch.cat(v)[:examples].cpu() for k, v in kept.items()}, leaked)  # fmt: skip


def _predict(model: nn.Module, images: torch.Tensor, draws: int, into: list[_Draw], labels: torch.Tensor,
             targets: torch.Tensor, mask: torch.Tensor) -> None:  # fmt: skip
    with torch.no_grad():
        for d in range(draws):
            with fixed_rad_seed(model, DRAW_SEED + d):
                into[d].add(model(images).argmax(1), labels, targets, mask)
