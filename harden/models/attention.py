"""The attention interface shared by every model: one module for `softmax(q·kᵀ·scale + bias) v`.

Every attention layer in `harden.models` (SegFormer's spatial-reduction attention, ViT
self-attention, Segmenter's mask transformer, the non-local block, Swin's window attention)
computes its queries, keys and values itself and hands them to an `AttentionCore`. That core is
the one place later work needs:

- RAM (`insert_ram_`) replaces `AttentionCore` modules, found with `find_attention`, by robust
  ones; everything RAM needs is in the call: the logits, N = number of KEYS (`k.shape[-2]`,
  fewer than queries under spatial reduction), and an optional bias and mask kept apart.
- attention-aware attacks (Patch-Fool, Attention-Fool, MaxVarDAG) and attention pictures read
  the logits and attention matrices through `register_attention_hook`.

The computation is split into three overridable steps, `logits` → `normalise` → `drop`, so that
RAM's `RobustAttentionCore` changes only what differs (MAS in `normalise`, RAD in `drop`).

Shapes: q (B, heads, Nq, d); k, v (B, heads, Nk, d); out (B, heads, Nq, d). `bias` is added to
the logits before the softmax (relative position bias: part of the logits); `mask` is a boolean
keep-mask (False = may not attend, e.g. across Swin's shifted-window borders), applied last so
that a transformation of the logits can never "unmask" a masked pair. Both broadcast to
(B, heads, Nq, Nk).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class AttentionTrace:
    """What one attention call computed, handed to hooks; all (B, heads, Nq, Nk), in the graph.

    Args:
        logits: the query-key products A (scaled, with bias; under RAM also after temperature or
            learnable gain), before any masking.
        attention: the normalised attention (softmax, or MAS under RAM), before RAD.
        applied: the matrix multiplied with V: after RAD, or `attention` itself without RAD.
    """

    logits: torch.Tensor
    attention: torch.Tensor
    applied: torch.Tensor


AttentionHook = Callable[["AttentionCore", AttentionTrace], None]


class AttentionCore(nn.Module):
    """Scaled dot-product attention with hooks. Uses the fused kernel when nothing is hooked.

    Args:
        scale: logit scale; None means 1/sqrt(head dim).
    """

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = scale
        self._hooks: OrderedDict[int, AttentionHook] = OrderedDict()  # weak-referenceable, as handles need

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.takes_fused_path:
            attn_mask = bias
            if mask is not None:
                base = bias if bias is not None else torch.zeros((), dtype=q.dtype, device=q.device)
                attn_mask = base.masked_fill(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.forward_with_attention(q, k, v, bias, mask)[0]

    def forward_with_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The explicit path: (output (B, heads, Nq, d), applied attention (B, heads, Nq, Nk))."""
        logits = self.logits(q, k, bias)  # (B, heads, Nq, Nk)
        attention = self.normalise(logits, mask)
        applied = self.drop(attention)
        if self._hooks:
            trace = AttentionTrace(logits, attention, applied)
            for hook in list(self._hooks.values()):
                hook(self, trace)
        return applied @ v, applied

    @property
    def uses_fused_kernel(self) -> bool:
        """Whether an unhooked call may take the fused SDPA kernel (same maths, less memory)."""
        return True

    @property
    def takes_fused_path(self) -> bool:
        """True when the next call may skip the explicit path: nothing hooked, nothing changed."""
        return not self._hooks and self.uses_fused_kernel

    def logits(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention logits A = q·kᵀ·scale (+ bias): (B, heads, Nq, Nk)."""
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        logits = (q * scale) @ k.transpose(-2, -1)
        return logits + bias if bias is not None else logits

    def normalise(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax over keys, masked pairs excluded: rows sum to 1."""
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(dim=-1)

    def drop(self, attention: torch.Tensor) -> torch.Tensor:
        """A hook for attention dropout; the plain core drops nothing."""
        return attention

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The normalised attention matrix (before any dropout): (B, heads, Nq, Nk)."""
        return self.normalise(self.logits(q, k, bias), mask)

    def register_attention_hook(self, hook: AttentionHook) -> RemovableHandle:
        """Call `hook(module, trace)` on every forward (see `AttentionTrace`); returns a handle.

        The traced tensors are part of the autograd graph, so a hook may build a loss from them.
        """
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle


def find_attention(model: nn.Module) -> list[tuple[str, AttentionCore]]:
    """All attention cores of a model with their fully qualified names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionCore)]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads·d) → (B, heads, N, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) → (B, N, heads·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class MultiHeadSelfAttention(nn.Module):
    """Standard multi-head self-attention over tokens (B, N, C), via an `AttentionCore`.

    Args:
        dim: token width C (divisible by heads).
        heads: number of heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(self.core(q, k, v)))
