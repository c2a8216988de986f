"""Segmentation metrics from a confusion matrix accumulated over a whole dataset.

mIoU is always computed from the dataset-level confusion matrix, never as a mean of per-batch
or per-image mIoUs (docs/design.md §2). Classes that appear neither in the labels nor in the
predictions have an undefined IoU (NaN) and are left out of the mean, as in mmsegmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError


@dataclass
class ConfusionMatrix:
    """`matrix[t, p]` counts pixels of true class t predicted as class p (ignored pixels excluded).

    Args:
        num_classes: number of classes K.
        ignore_index: label value that is not counted.
    """

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch. pred and target: (B, H, W) or any equal shapes of class ids.

        mask: optional bool tensor of the same shape; only pixels where it is True are counted.
        """
        if pred.shape != target.shape:
            raise InputError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        valid = target != self.ignore_index
        if mask is not None:
            valid &= mask.bool()
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise InputError(
                f"label values must be in 0..{self.num_classes - 1} or {self.ignore_index}; "
                f"found {int(t.min())}..{int(t.max())}"
            )
        if p.numel() and (p.min() < 0 or p.max() >= self.num_classes):
            raise InputError(f"predictions must be in 0..{self.num_classes - 1}")
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).cpu().numpy()

    def per_class_iou(self) -> np.ndarray:
        """(K,) IoU = TP / (TP + FP + FN); NaN where a class is neither labelled nor predicted."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A JSON-friendly dict: mIoU, pixel accuracy and per-class IoU (None where undefined)."""
        names = class_names or tuple(str(i) for i in range(self.num_classes))
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {
                name: (None if np.isnan(v) else float(v)) for name, v in zip(names, self.per_class_iou(), strict=True)
            },
            "pixels": int(self.matrix.sum()),
        }


def iou_ratio(adversarial_miou: float, clean_miou: float) -> float:
    """Arnab et al. §3: adversarial mIoU / clean mIoU (1 = unaffected, 0 = destroyed)."""
    if not clean_miou > 0:
        raise InputError(f"the IoU ratio needs a positive clean mIoU, got {clean_miou}")
    return adversarial_miou / clean_miou


def pixel_accuracy_excluding(
    pred: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> float:
    """RAM paper eq. (21): pixel accuracy over pixels outside `exclude` (e.g. an adversarial patch).

    pred, target: (B, H, W) class ids; exclude: bool, broadcastable to (B, H, W).
    """
    keep = (target != ignore_index) & ~exclude.bool().expand_as(target)
    total = int(keep.sum())
    if total == 0:
        raise InputError("no labelled pixels remain outside the excluded region")
    return float(((pred == target) & keep).sum()) / total


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits → (B, H, W) int64 class ids: `logits.argmax(1)`, computed by numpy on
    CPU, where torch's argmax over a strided class axis is about 4× slower (both return the first
    of tied maxima and treat NaN as the maximum, so the result is the same)."""
    if logits.device.type != "cpu" or logits.dtype not in (torch.float32, torch.float64):
        return logits.argmax(1)
    return torch.from_numpy(logits.detach().numpy().argmax(1))
