"""`harden::robust_attention`: a whole RobustAttention call, q·kᵀ → MAS → RAD → ·v, as one op.

On a GPU with Triton installed it runs the fused kernels of `harden.ram.triton_attention`
(no N×N matrix in memory, forward or backward); elsewhere it runs the reference composition of
`harden::mas` and `harden::rad`, so both give the same masks for the same (seed, counter) and
the same values to float rounding. `RobustAttentionCore` calls it on CUDA tensors when nothing
needs the attention matrix itself (no hooks, no bias or mask, no learnable gain).

The op also returns the rows' log-sum-exp, which the fused backward pass needs; it is an
auxiliary output and is not differentiated.
"""

from __future__ import annotations

import math

import torch

from harden.ram import ops
from harden.ram.triton_attention import (
    RamArithmetic,
    attention_backward,
    attention_forward,
    interpreting,
    triton_available,
)


def runs_triton(device: torch.device) -> bool:
    """Whether the op takes the Triton kernels on `device`: CUDA, or CPU under TRITON_INTERPRET=1."""
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    threshold: float | None,
    seed: torch.Tensor,
    counter: int,
    p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused composition, as `RobustAttentionCore.forward_with_attention` computes it."""
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if threshold is None:
        z = logits
        attention = logits.softmax(dim=-1)
    else:
        z = torch.nn.functional.softsign(logits) * ops.mas_gain(threshold, k.shape[-2])
        attention = torch.ops.harden.mas(logits, threshold)
    if p > 0:
        attention = torch.ops.harden.rad(attention, seed, counter, p)
    return attention @ v, z.float().logsumexp(dim=-1)


def _arithmetic(
    q: torch.Tensor, k: torch.Tensor, scale: float, threshold: float | None, counter: int, p: float
) -> RamArithmetic:
    if not (math.prod(q.shape[:-1]) < 2**31 and k.shape[-2] < 2**31):
        raise ValueError(
            f"RAD's generator indexes rows and keys below 2^31; got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    return RamArithmetic.of(keys=k.shape[-2], scale=scale, threshold=threshold, counter=counter, p=p)


@torch.library.custom_op("harden::robust_attention", mutates_args=())
def robust_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    threshold: float | None,
    seed: torch.Tensor,
    counter: int,
    p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RAD(MAS(scale·q·kᵀ))·v (RAM paper, eq. 4 and 16) and each row's log-sum-exp.

    Args:
        q: queries (B, H, Nq, d); k, v: keys and values (B, H, Nk, d); fp32, fp16 or bf16.
        scale: logit scale (1/√d, divided by RAM's temperature if any).
        threshold: MAS's T in (1/Nk, 1); None for a plain softmax.
        seed: 0-d int64 tensor; counter: the RAD call's index in the forward pass (see `harden::rad`).
        p: RAD's drop probability in [0, 1); 0 drops nothing.

    Returns:
        out (B, H, Nq, d) in q's dtype, and the log-sum-exp of the (MAS-transformed) logits
        (B, H, Nq) in float32.
    """
    if runs_triton(q.device):
        return attention_forward(q, k, v, seed, _arithmetic(q, k, scale, threshold, counter, p))
    return _reference(q, k, v, scale, threshold, seed, counter, p)


@robust_attention.register_fake
def _(q, k, v, scale, threshold, seed, counter, p):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    q, k, v, scale, threshold, seed, counter, p = inputs
    out, lse = output
    ctx.settings = (scale, threshold, counter, p)  # type: ignore[attr-defined]
    ctx.save_for_backward(q, k, v, seed, out, lse)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _grad_lse: torch.Tensor) -> tuple:
    q, k, v, seed, out, lse = ctx.saved_tensors  # type: ignore[attr-defined]
    scale, threshold, counter, p = ctx.settings  # type: ignore[attr-defined]
    dq, dk, dv = torch.ops.harden.robust_attention_backward(grad, q, k, v, out, lse, scale, threshold, seed, counter, p)
    return dq, dk, dv, None, None, None, None, None


# The backward pass is an op of its own so that tracing (torch.compile, AOT autograd) sees one
# opaque node, as for `harden::rad`, rather than reading the seed's value.
@torch.library.custom_op("harden::robust_attention_backward", mutates_args=())
def robust_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    threshold: float | None,
    seed: torch.Tensor,
    counter: int,
    p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `harden::robust_attention` for the gradient `grad` of its output."""
    if runs_triton(q.device):
        ram = _arithmetic(q, k, scale, threshold, counter, p)
        return attention_backward(grad, q, k, v, out, lse, seed, ram)
    # The kernels' formulas (see `harden.ram.triton_attention`) on whole matrices.
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    attention = logits.softmax(dim=-1) if threshold is None else torch.ops.harden.mas(logits, threshold)
    applied, grad_attention = attention, grad @ v.transpose(-2, -1)
    if p > 0:
        applied = torch.ops.harden.rad(attention, seed, counter, p)
        grad_attention = torch.ops.harden.rad(grad_attention, seed, counter, p)
    gain = None if threshold is None else ops.mas_gain(threshold, k.shape[-2])
    grad_z = ops.logits_gradient(logits, attention, grad_attention, gain)
    return (grad_z @ k) * scale, (grad_z.transpose(-2, -1) @ q) * scale, applied.transpose(-2, -1) @ grad


@robust_attention_backward.register_fake
def _(grad, q, k, v, out, lse, scale, threshold, seed, counter, p):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


robust_attention.register_autograd(_backward, setup_context=_setup_context)
