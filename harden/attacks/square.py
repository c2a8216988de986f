"""Square attack (Andriushchenko et al. 2020) adapted to segmentation: L∞, score-based.

It uses only the model's outputs, never its gradients, so it is the attack that can later run
directly against a deployed engine, and the black-box reference of the sanity checks: if it
beats the white-box attacks, gradients are masked (docs/design.md §6).

The score to lower is the mean over labelled pixels of the correct-class margin
z_y − max_{k≠y} z_k clipped to [0, 1]: 0 once every pixel is wrong, and the clip keeps far,
confident pixels from drowning out the near-boundary ones a small window can flip (targeted:
the target's margin max_{k≠t} z_k − z_t, 0 once every pixel is at its target). Random search
starts from vertical stripes of ±ε and then, per query, sets one random square window of the
perturbation to ±ε per channel, keeping the change when the score drops. Windows are drawn
inside the region the threat model lets the attacker change (the whole image, or a patch): a
window outside it would be projected away and waste the query. Their side is √(p·area),
p shrinking on Square's schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harden.attacks.base import Attack
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError


def margin_score(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """(B,) mean over labelled pixels of the margin the attacker still has to overcome, clipped
    to [0, 1]: the correct class's lead, or (targeted, `labels` = targets) the target's deficit."""
    valid = labels != IGNORE_INDEX
    safe = labels.where(valid, torch.zeros_like(labels))
    z_true = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, safe.unsqueeze(1), float("-inf")).amax(1)
    lead = z_true - others
    margin = (-lead if targeted else lead).clamp(0, 1) * valid
    return margin.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def region_boxes(region: torch.Tensor | None, shape: torch.Size) -> tuple[torch.Tensor, ...]:
    """(tops, lefts, heights, widths), each (B,): the bounding box of each image's editable
    region (`ThreatModel.region`), the whole image when region is None."""
    batch, _, height, width = shape
    if region is None:
        zeros = torch.zeros(batch, dtype=torch.long)
        return zeros, zeros, torch.full((batch,), height), torch.full((batch,), width)
    rows, cols = region.any(-1).any(1).cpu(), region.any(-2).any(1).cpu()  # (B, H), (B, W)
    if not rows.any(1).all():
        raise InputError("the threat model lets the attacker change no pixel of some image")
    tops, lefts = rows.int().argmax(1), cols.int().argmax(1)
    heights = height - rows.flip(1).int().argmax(1) - tops
    widths = width - cols.flip(1).int().argmax(1) - lefts
    return tops, lefts, heights, widths


def random_windows(boxes: tuple[torch.Tensor, ...], side: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) bool: one side×side window per image at a uniformly random place inside its
    box (side must fit every box)."""
    tops, lefts, heights, widths = boxes
    top = tops + (torch.rand(len(tops)) * (heights - side + 1)).long()
    left = lefts + (torch.rand(len(lefts)) * (widths - side + 1)).long()
    top, left = top.to(device).view(-1, 1, 1, 1), left.to(device).view(-1, 1, 1, 1)
    rows = torch.arange(shape[2], device=device).view(1, 1, -1, 1)
    cols = torch.arange(shape[3], device=device).view(1, 1, 1, -1)
    return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """Square's schedule of the window area fraction, with the query rescaled to a 10 000 budget."""
    it = int(query / queries * 10_000)
    for bound, divisor in (
        (10, 1),
        (50, 2),
        (200, 4),
        (500, 8),
        (1000, 16),
        (2000, 32),
        (4000, 64),
        (6000, 128),
        (8000, 256),
    ):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


class Square(Attack):
    """Args: see `Attack` (steps = queries per image); p_init: first window area fraction of
    the editable region."""

    name = "square"
    default_steps = 300
    supports_targeted = True

    def __init__(self, threat: ThreatModel, *, p_init: float = 0.05, **common: Any) -> None:
        super().__init__(threat, **common)
        if threat.norm != "linf":
            raise InputError("square is implemented for L∞ only")
        if not 0 < p_init <= 1:
            raise InputError(f"square: p_init must be in (0, 1], got {p_init}")
        self.p_init = p_init

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, channels, _, width = images.shape
        eps = self.threat.eps

        def random_signs(*shape: int) -> torch.Tensor:
            return (torch.randint(0, 2, shape, device="cpu").to(images) * 2 - 1) * eps

        boxes = region_boxes(self.threat.region(images), images.shape)
        largest_side = int(torch.minimum(boxes[2], boxes[3]).min())
        area = int((boxes[2] * boxes[3]).min())
        x_best = self.threat.project(images + random_signs(batch, channels, 1, width), images)
        score_best = margin_score(self.predict(model, x_best), labels, self.targeted)
        for query in range(1, self.steps):
            if not (score_best > 0).any():
                break
            fraction = square_fraction(self.p_init, query, self.steps)
            side = max(1, min(largest_side, round(math.sqrt(fraction * area))))
            window = random_windows(boxes, side, images.shape, images.device)
            delta = torch.where(window, random_signs(batch, channels, 1, 1), x_best - images)
            candidate = self.threat.project(images + delta, images)
            score = margin_score(self.predict(model, candidate), labels, self.targeted)
            better = (score < score_best) & (score_best > 0)
            score_best = torch.where(better, score, score_best)
            x_best = torch.where(better.view(-1, 1, 1, 1), candidate, x_best)
        return x_best


class RandomNoise(Attack):
    """The weakest reference: the worst (by the Square score) of `steps` random ±ε sign images."""

    name = "noise"
    default_steps = 1
    needs_eot = False  # it uses no gradient, and its one-draw score only picks among random images

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best, best_score = images, torch.full((images.shape[0],), float("inf"), device=images.device)
        for _ in range(self.steps):
            signs = torch.randint(0, 2, images.shape, device="cpu").to(images) * 2 - 1
            candidate = self.threat.project(images + self.threat.eps * signs, images)
            score = margin_score(self.predict(model, candidate), labels)
            better = score < best_score
            best_score = torch.where(better, score, best_score)
            best = torch.where(better.view(-1, 1, 1, 1), candidate, best)
        return best
