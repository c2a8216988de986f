"""The attention interface shared by every model: one module for `softmax(q·kᵀ·scale + bias) v`.

Every attention layer in `harden.models` (SegFormer's spatial-reduction attention, ViT
self-attention, Segmenter's mask transformer, the non-local block, Swin's window attention)
computes its queries, keys and values itself and hands them to an `AttentionCore`. That core is
the one place later work needs:

- RAM (`insert_ram_`) replaces `AttentionCore` modules, found with `find_attention`, by robust
  ones; everything RAM needs is in the call: the logits, N = number of KEYS (`k.shape[-2]`,
  fewer than queries under spatial reduction), and an optional bias and mask kept apart.
- attention-aware attacks (Patch-Fool, Attention-Fool, MaxVarDAG) read the normalised attention
  matrix through `register_attention_hook`.

Shapes: q (B, heads, Nq, d); k, v (B, heads, Nk, d); out (B, heads, Nq, d). `bias` is added to
the logits before the softmax (relative position bias: part of the logits); `mask` is a boolean
keep-mask (False = may not attend, e.g. across Swin's shifted-window borders), applied last so
that a transformation of the logits can never "unmask" a masked pair. Both broadcast to
(B, heads, Nq, Nk).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

AttentionHook = Callable[["AttentionCore", torch.Tensor], None]


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
        if not self._hooks:
            attn_mask = bias
            if mask is not None:
                base = bias if bias is not None else torch.zeros((), dtype=q.dtype, device=q.device)
                attn_mask = base.masked_fill(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        attn = self.attention(q, k, bias, mask)  # (B, heads, Nq, Nk)
        for hook in list(self._hooks.values()):
            hook(self, attn)
        return attn @ v

    def logits(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention logits A = q·kᵀ·scale (+ bias): (B, heads, Nq, Nk)."""
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        logits = (q * scale) @ k.transpose(-2, -1)
        return logits + bias if bias is not None else logits

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The normalised attention matrix softmax(A): (B, heads, Nq, Nk), rows sum to 1."""
        logits = self.logits(q, k, bias)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(dim=-1)

    def register_attention_hook(self, hook: AttentionHook) -> RemovableHandle:
        """Call `hook(module, attention)` on every forward; returns a handle with `.remove()`.

        The attention tensor is part of the autograd graph, so a hook may build a loss from it.
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
