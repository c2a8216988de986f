"""SegFormer (Xie et al. 2021): hierarchical Mix Transformer encoder + all-MLP decoder.

Attention is global but "efficient": keys and values come from the token map shrunk by a
strided convolution (reduction ratio R per stage), so N keys = N queries / R² — the case where
MAS must use the number of KEYS (docs/design.md §3).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.models._registry import register_model
from harden.models.attention import AttentionCore, merge_heads, split_heads
from harden.models.base import DropPath, SegmentationModel, map_to_tokens, tokens_to_map
from harden.models.decoders import AllMLPDecoder


class SpatialReductionAttention(nn.Module):
    def __init__(self, dim: int, heads: int, reduction: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.reduce = nn.Conv2d(dim, dim, reduction, reduction) if reduction > 1 else None
        self.reduce_norm = nn.LayerNorm(dim) if reduction > 1 else None
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        q = split_heads(self.q(x), self.heads)  # (B, heads, H·W, d)
        if self.reduce is not None and self.reduce_norm is not None:
            x = self.reduce_norm(map_to_tokens(self.reduce(tokens_to_map(x, height, width))))
        k, v = (split_heads(t, self.heads) for t in self.kv(x).chunk(2, dim=-1))  # (B, heads, N/R², d)
        return self.proj(merge_heads(self.core(q, k, v)))


class MixFFN(nn.Module):
    """Linear → 3×3 depth-wise conv (positional information, no position embedding) → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.dwconv(tokens_to_map(self.fc1(x), height, width))
        return self.fc2(F.gelu(map_to_tokens(x)))


class MixBlock(nn.Module):
    def __init__(self, dim: int, heads: int, reduction: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SpatialReductionAttention(dim, heads, reduction)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.ffn(self.norm2(x), height, width))


class MixStage(nn.Module):
    """Overlapping patch embedding (strided conv) followed by Mix blocks and a norm."""

    def __init__(
        self, cin: int, dim: int, depth: int, heads: int, reduction: int, stride: int, mlp_ratio: int, drop_path: float
    ) -> None:
        super().__init__()
        kernel = 7 if stride == 4 else 3
        self.embed = nn.Conv2d(cin, dim, kernel, stride, kernel // 2)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(MixBlock(dim, heads, reduction, mlp_ratio, drop_path) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        height, width = x.shape[-2:]
        tokens = self.embed_norm(map_to_tokens(x))
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return tokens_to_map(self.norm(tokens), height, width)


class SegFormer(SegmentationModel):
    """Args:
    num_classes: K.
    dims, depths, heads, reductions: per-stage width, block count, heads, spatial reduction R.
    decoder_dim: width of the all-MLP decoder.
    mlp_ratio: Mix-FFN expansion.
    drop_path: stochastic depth rate.
    """

    min_input_side = 32  # the reductions of the last stage need ≥ 1 token per side

    backbone_modules = ("stages",)

    def __init__(
        self,
        num_classes: int,
        dims: tuple[int, ...] = (32, 64, 160, 256),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        heads: tuple[int, ...] = (1, 2, 5, 8),
        reductions: tuple[int, ...] = (8, 4, 2, 1),
        decoder_dim: int = 256,
        mlp_ratio: int = 4,
        drop_path: float = 0.1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        cins = (3, *dims[:-1])
        strides = (4, 2, 2, 2)
        self.stages = nn.ModuleList(
            MixStage(c, d, n, h, r, s, mlp_ratio, drop_path)
            for c, d, n, h, r, s in zip(cins, dims, depths, heads, reductions, strides, strict=True)
        )
        self.decoder = AllMLPDecoder(dims, decoder_dim, num_classes, dropout)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return self.decoder(maps)


@register_model(family="segformer", has_attention=True, tiny=True)
def segformer_tiny(num_classes: int, **kwargs: Any) -> SegFormer:
    """SegFormer with widths 16–128, one block per stage: CPU demos and tests."""
    defaults: dict[str, Any] = dict(
        dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), heads=(1, 1, 2, 4), decoder_dim=64, drop_path=0.0
    )
    return SegFormer(num_classes, **{**defaults, **kwargs})


@register_model(family="segformer", has_attention=True, tiny=False)
def segformer_b0(num_classes: int, **kwargs: Any) -> SegFormer:
    """SegFormer-B0 (MiT-B0 encoder, 3.7M parameters), the RAM paper's smallest SegFormer."""
    return SegFormer(num_classes, **kwargs)
