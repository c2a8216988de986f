"""Square attack (Andriushchenko et al. 2020) adapted to segmentation: L∞, score-based.

It uses only the model's outputs, never its gradients, so it is the attack that can later run
directly against a deployed engine, and the black-box reference of the sanity checks: if it
beats the white-box attacks, gradients are masked (DESIGN.md §6).

The score to lower is the mean over labelled pixels of the correct-class margin
z_y − max_{k≠y} z_k clipped to [0, 1]: 0 once every pixel is wrong, and the clip keeps far,
confident pixels from drowning out the near-boundary ones a small window can flip. Random search starts from
vertical stripes of ±ε and then, per query, sets one random square window (side
√(p·H·W), p shrinking on Square's schedule) of the perturbation to ±ε per channel, keeping
the change when the score drops.
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


def margin_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean over labelled pixels of the correct-class margin clipped to [0, 1]."""
    valid = labels != IGNORE_INDEX
    safe = labels.where(valid, torch.zeros_like(labels))
    z_true = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, safe.unsqueeze(1), float("-inf")).amax(1)
    margin = (z_true - others).clamp(0, 1) * valid
    return margin.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


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
    """Args: see `Attack` (steps = queries per image); p_init: first window area fraction."""

    name = "square"
    default_steps = 300

    def __init__(self, threat: ThreatModel, *, p_init: float = 0.05, **common: Any) -> None:
        super().__init__(threat, **common)
        if threat.norm != "linf":
            raise InputError("square is implemented for L∞ only")
        if not 0 < p_init <= 1:
            raise InputError(f"square: p_init must be in (0, 1], got {p_init}")
        self.p_init = p_init

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = images.shape
        eps = self.threat.eps

        def random_signs(*shape: int) -> torch.Tensor:
            return (torch.randint(0, 2, shape, device="cpu").to(images) * 2 - 1) * eps

        x_best = self.threat.project(images + random_signs(batch, channels, 1, width), images)
        score_best = margin_score(self.predict(model, x_best), labels)
        rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, 1, width)
        for query in range(1, self.steps):
            if not (score_best > 0).any():
                break
            side = max(
                1,
                min(height, width, round(math.sqrt(square_fraction(self.p_init, query, self.steps) * height * width))),
            )
            top = torch.randint(0, height - side + 1, (batch,), device="cpu").to(images.device).view(-1, 1, 1, 1)
            left = torch.randint(0, width - side + 1, (batch,), device="cpu").to(images.device).view(-1, 1, 1, 1)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            delta = torch.where(window, random_signs(batch, channels, 1, 1), x_best - images)
            candidate = self.threat.project(images + delta, images)
            score = margin_score(self.predict(model, candidate), labels)
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
