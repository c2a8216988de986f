"""The threat model: which perturbations an attacker may add (docs/design.md §2).

Images live in the box [0, 1]; a perturbation δ is allowed when ‖δ‖ ≤ ε in the chosen norm and
x + δ stays in the box. ε is written in pixel units on [0, 1]: `4/255` and `0.0157` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

import torch

from harden.errors import InputError

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")


def parse_eps(text: str) -> float:
    """`4/255` → 0.01568…, `0.03` → 0.03. InputError (exit 2) for anything else or a negative value."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"ε {text!r} is not a number; write e.g. 4/255 or 0.0157") from None
    if not value >= 0:
        raise InputError(f"ε must be ≥ 0, got {text!r}")
    return value


def format_eps(eps: float) -> str:
    """0.0156862… → '4/255' when ε is a whole number of 8-bit grey levels, else the decimal."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{eps:.4g}"


@dataclass(frozen=True)
class ThreatModel:
    """‖δ‖ ≤ eps in `norm`, and low ≤ x + δ ≤ high.

    Args:
        eps: radius, ≥ 0. For L∞ at most the box width (ε = 1 lets the attacker write any image).
        norm: "linf" or "l2" (the L2 norm is taken per image over all channels and pixels).
        low, high: the box.
    """

    eps: float
    norm: Norm = "linf"
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if not (self.eps >= 0 and self.eps < float("inf")):
            raise InputError(f"ε must be a finite number ≥ 0, got {self.eps}")
        if self.norm == "linf" and self.eps > self.high - self.low:
            raise InputError(
                f"an L∞ ε of {self.eps} exceeds the box width {self.high - self.low}; "
                "ε = 1 already allows any image (write e.g. 8/255)"
            )

    def with_eps(self, eps: float) -> ThreatModel:
        return replace(self, eps=eps)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The nearest allowed image to x_adv: into the ε-ball around x, then into the box.

        For L∞ the two projections commute (both are per-coordinate clamps), so this is exact;
        for L2 clamping after the ball projection keeps δ inside the ball (it only shrinks δ).
        """
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = _l2(delta).clamp_min(1e-12)
            delta = delta * (self.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
        return (x + delta).clamp(self.low, self.high)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random point of the ball (L∞: each coordinate; L2: a random direction and radius)."""
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        if self.norm == "l2":
            radius = torch.rand(x.shape[0], generator=generator, device="cpu").to(x)
            noise = noise / _l2(noise).clamp_min(1e-12).view(-1, 1, 1, 1) * radius.view(-1, 1, 1, 1)
        return self.project(x + self.eps * noise, x)

    def region(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, H, W) bool: the pixels an attacker may change, or None for every pixel (the
        ε-ball threat models). Random search draws its windows there (`Square`)."""
        return None

    def steepest_step(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit step that increases a linear loss most: sign(g) for L∞, g/‖g‖₂ for L2."""
        if self.norm == "linf":
            return grad.sign()
        return grad / _l2(grad).clamp_min(1e-12).view(-1, 1, 1, 1)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) the norm of each image's perturbation."""
        delta = x_adv - x
        if self.norm == "linf":
            return delta.flatten(1).abs().amax(1)
        return _l2(delta)

    def describe(self) -> str:
        return f"{'L∞' if self.norm == 'linf' else 'L2'} ε={format_eps(self.eps) if self.norm == 'linf' else self.eps}"


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)
