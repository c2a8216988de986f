"""MAS and RAD as PyTorch custom ops (`harden::mas`, `harden::rad`).

Custom ops, rather than plain functions, so that `torch.compile`, `torch.export` and the ONNX
exporter see one node per MAS/RAD call, which export translates to the `harden` ONNX domain
(docs/design.md §4). Each op has a fake (meta) implementation for tracing and an autograd formula.
"""

from __future__ import annotations

import math

import torch

from harden.errors import InputError
from harden.ram.counter_rng import keep_mask_torch, keep_scale


def check_threshold(threshold: float, num_keys: int) -> None:
    """MAS bounds every attention weight by T only for 1/N < T < 1 (N = keys per softmax row)."""
    if not (math.isfinite(threshold) and 1.0 / num_keys < threshold < 1.0):
        lowest = f"1/{num_keys} = {1.0 / num_keys:.4g}"
        raise InputError(
            f"MAS threshold must lie in ({lowest}, 1) for an attention row over {num_keys} keys, got {threshold}: "
            f"{num_keys} weights summing to 1 cannot all stay below {lowest}. Raise --mas-threshold "
            "(the paper uses 0.3) or disable MAS for layers with so few keys."
        )


def mas_gain(threshold: float, num_keys: int) -> float:
    """k = ½·log((N−1)·T/(1−T)): MAS is softmax(k·softsign(A)) (eq. 4 without its constant term)."""
    return 0.5 * math.log((num_keys - 1) * threshold / (1.0 - threshold))


def _row_gain(threshold: float, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-row gain for a keep-mask: N is the number of keys a row may attend to.

    A row with N ≤ 1/T cannot be bounded by T; its gain is clamped to 0 (uniform attention over
    its keys, the smallest maximum any row of N weights can have).
    """
    n = mask.sum(dim=-1, keepdim=True).to(dtype)  # (..., Nq, 1)
    ratio = (n - 1) * (threshold / (1.0 - threshold))
    return 0.5 * torch.log(ratio.clamp(min=1.0))


@torch.library.custom_op("harden::mas", mutates_args=())
def mas(logits: torch.Tensor, threshold: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Max Attention Suppression (RAM paper, eq. 4–5): attention weights with max ≤ `threshold`.

    Args:
        logits: attention logits A, (..., Nq, Nk).
        threshold: T in (1/Nk, 1).
        mask: optional boolean keep-mask broadcastable to `logits` (False = may not attend).
            Masked weights are exactly 0 and N counts each row's allowed keys.

    Returns:
        M = softmax(k·softsign(A)) over the last dim, which equals softmax(A') of eq. (4)
        because softmax ignores the constant "+1" term of A'.
    """
    check_threshold(threshold, logits.shape[-1])
    z = _softsign(logits)
    if mask is None:
        return z.mul_(mas_gain(threshold, logits.shape[-1])).softmax(dim=-1)
    mask = mask.expand(logits.shape)
    z.mul_(_row_gain(threshold, mask, logits.dtype))
    return z.masked_fill_(~mask, float("-inf")).softmax(dim=-1)


def _softsign(x: torch.Tensor) -> torch.Tensor:
    """x / (1 + |x|) in one new tensor (F.softsign allocates three): the same float operations."""
    denominator = x.abs().add_(1.0)
    return torch.div(x, denominator, out=denominator)


@mas.register_fake
def _(logits: torch.Tensor, threshold: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.empty_like(logits)


def _mas_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    logits, threshold, mask = inputs
    ctx.threshold = threshold  # type: ignore[attr-defined]
    ctx.save_for_backward(logits, output, mask)


def _mas_backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
    logits, attention, mask = ctx.saved_tensors  # type: ignore[attr-defined]
    threshold = ctx.threshold  # type: ignore[attr-defined]
    if mask is None:
        gain: float | torch.Tensor = mas_gain(threshold, logits.shape[-1])
    else:
        gain = _row_gain(threshold, mask.expand(logits.shape), logits.dtype)
    return logits_gradient(logits, attention, grad, gain), None, None


def logits_gradient(
    logits: torch.Tensor, attention: torch.Tensor, grad: torch.Tensor, gain: float | torch.Tensor | None
) -> torch.Tensor:
    """∂L/∂logits from ∂L/∂attention = `grad`, for attention = softmax(gain·softsign(logits))
    (MAS), or softmax(logits) when gain is None. The one copy of this formula: MAS's backward
    and the fused attention's reference backward both use it."""
    # softmax backward, then the chain rule through k·softsign: softsign'(x) = 1/(1+|x|)².
    grad_z = attention * (grad - (grad * attention).sum(dim=-1, keepdim=True))
    return grad_z if gain is None else grad_z * gain / (1.0 + logits.abs()).square()


mas.register_autograd(_mas_backward, setup_context=_mas_setup_context)


@torch.library.custom_op("harden::rad", mutates_args=())
def rad(attention: torch.Tensor, seed: torch.Tensor, counter: int, p: float) -> torch.Tensor:
    """Random Attention Dropout (RAM paper, eq. 16) with the counter-based generator.

    Drops each weight with probability p and scales the kept ones by the inverse keep
    probability. The mask is a pure function of (seed, counter, position): see
    `harden.ram.counter_rng` for the specification every implementation reproduces.

    Args:
        attention: normalised attention M, (..., Nq, Nk).
        seed: 0-d int64 tensor (a graph input once exported, so deployment feeds one per frame).
        counter: index of this RAD call within the forward pass, 0 ≤ counter < 2³¹ − 1.
        p: drop probability in [0, 1).
    """
    # The kernel always sees a real seed (tracing uses the fake implementation below), so the
    # scalar key schedule may run in Python.
    keep = keep_mask_torch(int(seed.item()), counter, attention.shape, p, attention.device)
    # M·keep then ·s equals "s·M where kept, else 0" bit for bit (M·1 = M, M·0 = 0 for finite M),
    # and a multiply by a bool tensor is ~5× faster than torch.where on CPU.
    return (attention * keep).mul_(keep_scale(p))


@rad.register_fake
def _(attention: torch.Tensor, seed: torch.Tensor, counter: int, p: float) -> torch.Tensor:
    return torch.empty_like(attention)


def _rad_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    _, seed, counter, p = inputs
    ctx.counter, ctx.p = counter, p  # type: ignore[attr-defined]
    ctx.save_for_backward(seed)


def _rad_backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
    # RAD is linear in M with a mask fixed by (seed, counter): its gradient is RAD of the
    # gradient, recomputed rather than stored.
    (seed,) = ctx.saved_tensors  # type: ignore[attr-defined]
    return rad(grad, seed, ctx.counter, ctx.p), None, None, None  # type: ignore[attr-defined]


rad.register_autograd(_rad_backward, setup_context=_rad_setup_context)
