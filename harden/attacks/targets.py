"""Target labels of the RAM paper's targeted patch attacks (§5.1, eq. 17–20), and their metrics.

Both settings use only classes ABSENT from an image's ground truth, so an attack that reaches
the target has visibly changed what the model sees:
- Permute (eq. 17–18): every present class c becomes a random absent class σ(c), keeping the
  shapes of the ground truth (the hard-to-notice attack);
- Strip (eq. 19–20): N horizontal stripes, each a random absent class.

The robustness metrics (eq. 21 and tables 3, 8): targeted mIoU between the prediction under
attack and the target (lower = more robust), and pixel accuracy against the ground truth
outside the patch.
"""

from __future__ import annotations

import torch

from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.metrics import ConfusionMatrix


def permute_targets(labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(B, H, W) labels → targets: each present class mapped to a distinct random absent class
    when there are enough absent classes, else to random absent classes with repeats. Ignored
    pixels stay ignored."""
    generator = torch.Generator().manual_seed(seed)
    targets = labels.clone()
    for n in range(labels.shape[0]):
        present, absent = _present_absent(labels[n], num_classes)
        order = absent[torch.randperm(len(absent), generator=generator)]
        if len(absent) < len(present):
            order = absent[torch.randint(0, len(absent), (len(present),), generator=generator)]
        for c, target in zip(present.tolist(), order.tolist(), strict=False):
            targets[n][labels[n] == c] = target
    return targets


def strip_targets(labels: torch.Tensor, num_classes: int, stripes: int = 4, seed: int = 0) -> torch.Tensor:
    """(B, H, W) labels → targets of `stripes` horizontal stripes of random absent classes
    (rows n·H/N … (n+1)·H/N − 1 for stripe n; every pixel gets a target)."""
    if stripes < 1:
        raise InputError(f"the number of stripes must be ≥ 1, got {stripes}")
    generator = torch.Generator().manual_seed(seed)
    batch, height, _ = labels.shape
    targets = torch.empty_like(labels)
    for n in range(batch):
        _, absent = _present_absent(labels[n], num_classes)
        classes = absent[torch.randint(0, len(absent), (stripes,), generator=generator)]
        for s in range(stripes):
            targets[n, s * height // stripes : (s + 1) * height // stripes] = classes[s]
    return targets


def targeted_miou(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """mIoU between predictions under attack and the attack's targets (lower = more robust)."""
    confusion = ConfusionMatrix(num_classes)
    confusion.update(predictions, targets)
    return confusion.miou()


def counts_outside(predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(correct, labelled) pixels outside the patch. mask: (B, 1, H, W) or (B, H, W), 1 under the patch."""
    outside = (mask.reshape(labels.shape) < 0.5) & (labels != IGNORE_INDEX)
    return int(((predictions == labels) & outside).sum()), int(outside.sum())


def accuracy_outside(predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> float:
    """Eq. 21: pixel accuracy against the ground truth over the pixels outside the patch."""
    correct, total = counts_outside(predictions, labels, mask)
    return correct / total if total else float("nan")


def _present_absent(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = labels[labels != IGNORE_INDEX]
    if bool(((valid < 0) | (valid >= num_classes)).any()):
        raise InputError(f"label values must be in 0..{num_classes - 1} or {IGNORE_INDEX}")
    present = torch.unique(valid)
    is_absent = torch.ones(num_classes, dtype=torch.bool)
    is_absent[present] = False
    absent = torch.nonzero(is_absent).flatten()
    if len(absent) == 0:
        raise InputError("every class occurs in the image: a Permute/Strip target needs an absent class")
    return present, absent
