"""`RAMConfig`: what `insert_ram_` puts into every attention layer. Round-trips through JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from harden.errors import InputError


@dataclass(frozen=True)
class RAMConfig:
    """Args:
    mas: Max Attention Suppression (RAM paper §4.2): every attention weight ≤ `threshold`.
    threshold: T, in (1/N, 1) for N keys per row; the paper's default is 0.3.
    rad: Random Attention Dropout (§4.3), active in training AND evaluation.
    drop_p: RAD's drop probability p in [0, 1); the paper's default is 0.5.
    temperature: the "Temperature" comparison of §5.1 (Gu et al.): logits divided by this
        preset value (> 1 smooths the attention). None disables it.
    learnable: the "Learnable" comparison of §5.1 (Mao et al.): logits multiplied by a learnable
        scalar per attention layer, initialised to 1.
    """

    mas: bool = True
    threshold: float = 0.3
    rad: bool = True
    drop_p: float = 0.5
    temperature: float | None = None
    learnable: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise InputError(f"MAS threshold must lie in (0, 1), got {self.threshold} (the paper uses 0.3)")
        if not (math.isfinite(self.drop_p) and 0.0 <= self.drop_p < 1.0):
            raise InputError(f"RAD drop probability must lie in [0, 1), got {self.drop_p} (the paper uses 0.5)")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"attention temperature must be > 0, got {self.temperature}")

    @property
    def is_identity(self) -> bool:
        """True when the robust layer computes exactly what the original one did."""
        return not (self.mas or self.rad or self.learnable) and self.temperature is None

    def describe(self) -> str:
        parts = []
        if self.mas:
            parts.append(f"MAS(T={self.threshold:g})")
        if self.rad:
            parts.append(f"RAD(p={self.drop_p:g})")
        if self.temperature is not None:
            parts.append(f"temperature {self.temperature:g}")
        if self.learnable:
            parts.append("learnable logit gain")
        return " + ".join(parts) if parts else "identity"

    def in_words(self) -> str:
        """The settings as a sentence, for reports (`describe` is the short form)."""
        parts = []
        if self.mas:
            parts.append(f"MAS caps every attention weight at {self.threshold}")
        if self.rad:
            parts.append(f"RAD drops attention weights with p = {self.drop_p} at inference (attacked with EOT)")
        if self.temperature is not None:
            parts.append(f"attention logits divided by {self.temperature}")
        if self.learnable:
            parts.append("a learnable attention scale per layer")
        return "; ".join(parts) if parts else "present but every part off"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RAMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown RAM settings {sorted(unknown)}: written by a newer harden; upgrade harden")
        return cls(**data)
