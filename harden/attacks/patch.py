"""The patch threat model of the RAM paper (§5.1, Appendix A, Algorithm 1).

An attacker may change only the pixels under an m×m patch, to any value in [0, 1]. `PatchMask`
places the patch (a corner, the centre, a seeded random place per image, or explicit
coordinates); `patch_step` is one step of Algorithm 1: the loss gradient, scaled so that its
largest entry is γ, applied under the mask, then clipped to the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

from harden.attacks.threat import ThreatModel
from harden.errors import InputError

LOCATIONS: Final = ("lower-right", "lower-left", "upper-right", "upper-left", "center", "random")


@dataclass(frozen=True)
class PatchMask:
    """Where an m×m patch goes.

    Args:
        size: m, the patch side in pixels.
        location: one of LOCATIONS, or "Y,X" — the patch's top-left pixel.
        seed: for "random": the same seed places the patches of the same batch identically.
    """

    size: int
    location: str = "lower-right"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise InputError(f"the patch size must be ≥ 1 pixel, got {self.size}")
        if self.location not in LOCATIONS and _corner(self.location) is None:
            raise InputError(f"patch location {self.location!r}: choose {', '.join(LOCATIONS)} or Y,X (top-left pixel)")

    def __call__(self, batch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """(B, 1, H, W) float mask, 1 under the patch."""
        m = self.size
        if m > height or m > width:
            limit = min(height, width)
            raise InputError(f"a {m}×{m} patch does not fit {height}×{width} images; choose --patch ≤ {limit}")
        tops, lefts = self._corners(batch, height, width)
        mask = torch.zeros(batch, 1, height, width, device=device)
        for n, (top, left) in enumerate(zip(tops, lefts, strict=True)):
            mask[n, :, top : top + m, left : left + m] = 1.0
        return mask

    def _corners(self, batch: int, height: int, width: int) -> tuple[list[int], list[int]]:
        m, bottom, right = self.size, height - self.size, width - self.size
        fixed = {
            "lower-right": (bottom, right),
            "lower-left": (bottom, 0),
            "upper-right": (0, right),
            "upper-left": (0, 0),
            "center": (bottom // 2, right // 2),
        }
        if self.location in fixed:
            top, left = fixed[self.location]
            return [top] * batch, [left] * batch
        if self.location == "random":
            generator = torch.Generator().manual_seed(self.seed)
            tops = torch.randint(0, bottom + 1, (batch,), generator=generator).tolist()
            lefts = torch.randint(0, right + 1, (batch,), generator=generator).tolist()
            return tops, lefts
        corner = _corner(self.location)
        assert corner is not None
        top, left = corner
        if top + m > height or left + m > width:
            raise InputError(f"a {m}×{m} patch at {top},{left} leaves the {height}×{width} image")
        return [top] * batch, [left] * batch


def _corner(text: str) -> tuple[int, int] | None:
    try:
        top, left = (int(v) for v in text.split(","))
    except ValueError:
        return None
    return (top, left) if top >= 0 and left >= 0 else None


def patch_step(images: torch.Tensor, gradient: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Algorithm 1, lines 5–6: x + γ·r/‖r‖∞ ⊙ M, clipped to [0, 1].

    ‖r‖∞ is per image and over the whole gradient, as written in the paper (not only the patch's
    part), so the step under the patch can be smaller than γ.
    """
    if not gamma > 0:
        raise InputError(f"the step γ must be > 0, got {gamma}")
    scale = gradient.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (images + gamma * gradient / scale * mask).clamp(0.0, 1.0)


@dataclass(frozen=True, eq=False)
class PatchThreat(ThreatModel):
    """The patch threat model as a `ThreatModel` (ε = 1: any value, but only under `mask`), so
    that attacks written for ε-balls — APGD, Square — run inside a patch unchanged."""

    mask: torch.Tensor | None = None  # (B, 1, H, W), 1 under the patch

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None
        # a choice, not x + (x_adv − x)·mask: that sum can round x_adv off by an ulp under the patch
        return torch.where(self.mask > 0.5, x_adv.clamp(self.low, self.high), x)

    def region(self, x: torch.Tensor) -> torch.Tensor | None:
        assert self.mask is not None
        return (self.mask > 0.5).expand(x.shape[0], 1, *x.shape[2:])

    def describe(self) -> str:
        return "patch"
