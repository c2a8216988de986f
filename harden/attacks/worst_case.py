"""Per-image counts and worst cases over attacks (SEA paper §3.3; docs/design.md §6).

Pixel accuracy's worst case is per image: the attack with the lowest accuracy on each image.
mIoU is a dataset-level quantity (one confusion matrix over all images, docs/design.md §2), so its
worst case is an ASSIGNMENT of one attack to every image that minimises the dataset mIoU. That
is a combinatorial problem; `worst_case` starts from the best of the obvious assignments (every
image to the same attack, or every image to its lowest-accuracy attack) and improves it by
greedy per-image switches until none helps. It is therefore never weaker than any single
attack, and usually lower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError


@dataclass
class ImageCounts:
    """Per image n and class k: true positives, false positives, false negatives; and the
    correct and labelled pixel counts. Enough to recompute pAcc and mIoU for any assignment."""

    tp: np.ndarray  # (N, K) int64
    fp: np.ndarray
    fn: np.ndarray
    correct: np.ndarray  # (N,)
    total: np.ndarray

    @classmethod
    def empty(cls, num_classes: int) -> ImageCounts:
        zeros = np.zeros((0, num_classes), dtype=np.int64)
        return cls(zeros, zeros.copy(), zeros.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def from_predictions(cls, pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ImageCounts:
        """pred, labels: (B, H, W) class ids; labels may hold the ignore index.

        One bincount over (image, true class, predicted class) in numpy, with unlabelled pixels
        sent to an extra bin (no boolean compaction): about 40× faster than the same in torch
        on CPU, which matters to verify and replay, who call it for every candidate and draw.
        """
        t = labels.detach().cpu().numpy().astype(np.int64, copy=False)
        p = pred.detach().cpu().numpy().astype(np.int64, copy=False)
        valid = t != IGNORE_INDEX
        if bool((valid & ((t < 0) | (t >= num_classes))).any()):
            raise InputError(f"label values must be in 0..{num_classes - 1} or {IGNORE_INDEX}")
        if bool((valid & ((p < 0) | (p >= num_classes))).any()):
            raise InputError(f"predicted classes must be in 0..{num_classes - 1}")
        batch, bins = t.shape[0], num_classes * num_classes
        index = np.arange(batch, dtype=np.int64).reshape(-1, *([1] * (t.ndim - 1))) * bins + t * num_classes + p
        index = np.where(valid, index, batch * bins)
        confusion = np.bincount(index.ravel(), minlength=batch * bins + 1)[:-1].reshape(batch, num_classes, num_classes)
        tp = np.diagonal(confusion, axis1=1, axis2=2).copy()  # confusion[n, true, pred]
        return cls(
            tp=tp,
            fp=confusion.sum(1) - tp,
            fn=confusion.sum(2) - tp,
            correct=tp.sum(1),
            total=confusion.sum((1, 2)),
        )

    def extend(self, other: ImageCounts) -> ImageCounts:
        return ImageCounts(*(np.concatenate([a, b]) for a, b in zip(self._arrays(), other._arrays(), strict=True)))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.tp, self.fp, self.fn, self.correct, self.total

    def accuracy_per_image(self) -> np.ndarray:
        return np.where(self.total > 0, self.correct / np.maximum(self.total, 1), 1.0)

    def scores(self) -> tuple[float, float]:
        """(mIoU, pixel accuracy) over all images."""
        return miou(self.tp.sum(0), self.fp.sum(0), self.fn.sum(0)), _accuracy(self.correct.sum(), self.total.sum())


def miou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Mean IoU over classes with a non-empty union (as `metrics.ConfusionMatrix.miou`)."""
    union = tp + fp + fn
    return float((tp[union > 0] / union[union > 0]).mean()) if (union > 0).any() else float("nan")


def _accuracy(correct: int, total: int) -> float:
    return float(correct / total) if total else float("nan")


@dataclass
class WorstCase:
    pixel_accuracy: float
    miou: float
    accuracy_choice: np.ndarray  # (N,) index of the candidate used for each image's accuracy
    miou_choice: np.ndarray  # (N,) the mIoU assignment


def worst_case(candidates: list[ImageCounts], max_passes: int = 5) -> WorstCase:
    """The per-image worst pAcc and a (greedy) worst-case mIoU assignment over `candidates`."""
    if not candidates:
        raise ValueError("worst_case needs at least one candidate")
    accuracy = np.stack([c.accuracy_per_image() for c in candidates])  # (C, N)
    by_accuracy = accuracy.argmin(0)
    rows = np.arange(accuracy.shape[1])
    correct = np.stack([c.correct for c in candidates])[by_accuracy, rows].sum()
    worst_accuracy = _accuracy(int(correct), int(candidates[0].total.sum()))  # every candidate labels the same pixels

    tp, fp, fn = (np.stack([getattr(c, name) for c in candidates]) for name in ("tp", "fp", "fn"))  # (C, N, K)
    count = accuracy.shape[1]
    starts = [by_accuracy] + [np.full(count, c) for c in range(len(candidates))]

    def score(choice: np.ndarray) -> float:
        return miou(tp[choice, rows].sum(0), fp[choice, rows].sum(0), fn[choice, rows].sum(0))

    choice = min(starts, key=score).copy()
    totals = [a[choice, rows].sum(0) for a in (tp, fp, fn)]
    current = miou(*totals)
    for _ in range(max_passes):
        changed = False
        for n in range(count):
            base = [t - a[choice[n], n] for t, a in zip(totals, (tp, fp, fn), strict=True)]
            options = [base[0] + tp[:, n], base[1] + fp[:, n], base[2] + fn[:, n]]  # (C, K) each
            union = options[0] + options[1] + options[2]
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where(union > 0, options[0] / np.maximum(union, 1), np.nan)
            values = np.nanmean(np.where(np.isnan(iou).all(1, keepdims=True), 0.0, iou), axis=1)
            best = int(values.argmin())
            if values[best] < current - 1e-12:
                choice[n] = best
                totals = [b + a[best, n] for b, a in zip(base, (tp, fp, fn), strict=True)]
                current = float(values[best])
                changed = True
        if not changed:
            break
    return WorstCase(worst_accuracy, current, by_accuracy, choice)


class LowestPerImage:
    """Per image of a batch, the lowest score offered so far and the tensors that came with it:
    the one "keep the lower" rule of the attacks (their best point), of SEA and the patch
    attacks (their worst member), and of `harden attack` and `harden verify` (the worst image per
    ε). To keep the HIGHEST, offer the negated score.

    Args:
        initial: name → (B, ...) tensor kept until something scores lower.
        score: the initial scores (B,); +inf (anything replaces) when omitted.
        replace_ties: an equal score replaces the kept tensors (the later point wins).
    """

    def __init__(
        self, initial: dict[str, torch.Tensor], score: torch.Tensor | None = None, *, replace_ties: bool = False
    ) -> None:
        first = next(iter(initial.values()))
        self.kept = dict(initial)
        self.score = score if score is not None else torch.full((first.shape[0],), float("inf"), device=first.device)
        self.replace_ties = replace_ties

    def offer(self, score: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
        """Keep `tensors` for the images where `score` is lower; returns that (B,) bool mask."""
        score = score.to(self.score.device)
        lower = score <= self.score if self.replace_ties else score < self.score
        self.score = torch.where(lower, score, self.score)
        for name, tensor in tensors.items():
            kept = self.kept[name]
            mask = lower.to(kept.device).view(-1, *[1] * (kept.dim() - 1))
            self.kept[name] = torch.where(mask, tensor.to(kept.device), kept)
        return lower

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.kept[name]
