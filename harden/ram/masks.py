"""Turning additive attention masks (0 / −inf) into the (bias, keep-mask) pair RAM needs.

MAS transforms logits with softsign, which maps −inf to −1: an additive −inf mask applied
before MAS would no longer mask anything. So masked pairs travel as a boolean keep-mask that
MAS applies after its transform, and only the finite part stays an additive bias.
"""

from __future__ import annotations

import torch


def split_additive_mask(additive: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(bias, keep) from an additive or boolean mask; boolean masks here mean True = may attend.

    Values at or below half the dtype's most negative value count as masked (HF uses finfo.min
    rather than −inf).
    """
    if additive is None:
        return None, None
    if additive.dtype == torch.bool:
        return None, additive
    keep = additive > torch.finfo(additive.dtype).min / 2
    return additive.masked_fill(~keep, 0.0), keep


def combine_keep(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def add_bias(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b
