"""Swin-style local attention (Liu et al. 2021): shifted-window self-attention, patch merging,
and an all-MLP decoder over the four stages (as SegFormer's, lighter than UPerNet).

Attention is local: each token attends within its w×w window; every second block shifts the
windows by w/2 and masks pairs that the shift brought together from different image regions.
The relative position bias is part of the logits (`bias`), the shift mask is a keep-mask
(`mask`): the distinction the attention interface makes for RAM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.models._registry import register_model
from harden.models.attention import AttentionCore, merge_heads, split_heads
from harden.models.base import DropPath, SegmentationModel, tokens_to_map
from harden.models.decoders import AllMLPDecoder


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nW, w·w, C), windows in row-major order per image."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(windows: torch.Tensor, w: int, height: int, width: int) -> torch.Tensor:
    """(B·nW, w·w, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // w, width // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, w: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, w·w, w·w) bool: True where two tokens of a shifted window came from the same region."""
    regions = torch.zeros(1, height, width, 1, device=device)
    spans = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for i, hs in enumerate(spans):
        for j, ws in enumerate(spans):
            regions[:, hs, ws, :] = i * 3 + j
    ids = window_partition(regions, w)[..., 0]  # (nW, w·w)
    return ids[:, :, None] == ids[:, None, :]


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def relative_bias(self, w: int) -> torch.Tensor:
        """(heads, w·w, w·w) bias for a window of side w ≤ self.window (smaller near small maps)."""
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).to(self.bias_table.device) + self.window - 1
        index = rel[0] * (2 * self.window - 1) + rel[1]
        return self.bias_table[index].permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, w: int, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(windows).chunk(3, dim=-1))  # (B·nW, heads, w², d)
        bias = self.relative_bias(w)[None]
        if mask is not None:  # (nW, w², w²) → (B·nW, 1, w², w²), windows are image-major
            mask = mask.repeat(windows.shape[0] // mask.shape[0], 1, 1)[:, None]
        return self.proj(merge_heads(self.core(q, k, v, bias=bias, mask=mask)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shifted: bool, drop_path: float) -> None:
        super().__init__()
        self.window, self.shifted = window, shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = x.shape
        w = min(self.window, height, width)
        shift = w // 2 if self.shifted and min(height, width) > self.window else 0
        y = self.norm1(x).view(b, height, width, c)
        pad_h, pad_w = (-height) % w, (-width) % w
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = height + pad_h, width + pad_w
        mask = None
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, w, shift, x.device)
        y = window_reverse(self.attn(window_partition(y, w), w, mask), w, hp, wp)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        y = y[:, :height, :width].reshape(b, height * width, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """Blocks alternating regular and shifted windows."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, drop_path: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, shifted=i % 2 == 1, drop_path=drop_path) for i in range(depth)
        )

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, height, width)
        return x


class PatchMerging(nn.Module):
    """2×2 neighbouring tokens concatenated and projected: half the resolution, twice the width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
        b, _, c = x.shape
        y = x.view(b, height, width, c)
        y = F.pad(y, (0, 0, 0, width % 2, 0, height % 2))
        y = torch.cat([y[:, 0::2, 0::2], y[:, 1::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 1::2]], dim=-1)
        h2, w2 = y.shape[1], y.shape[2]
        return self.reduce(self.norm(y.reshape(b, h2 * w2, 4 * c))), h2, w2


class Swin(SegmentationModel):
    """Args:
    num_classes: K.
    embed_dim: stage-1 width (doubles per stage).
    depths, heads: blocks and heads per stage.
    window: window side w.
    decoder_dim: width of the all-MLP decoder.
    """

    backbone_modules = ("embed", "embed_norm", "stages", "merges", "norms")

    # The window size, the shift and the shifted-window mask are chosen in Python from the
    # feature-map size, so an exported graph holds the choices of the traced size only.
    export_static_size = "window size, shift and shift mask are chosen from the traced feature-map size"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        heads: tuple[int, ...] = (3, 6, 12, 24),
        window: int = 7,
        decoder_dim: int = 256,
        drop_path: float = 0.2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        self.embed = nn.Conv2d(3, embed_dim, 4, 4)
        self.embed_norm = nn.LayerNorm(embed_dim)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            SwinStage(d, n, h, window, drop_path) for d, n, h in zip(dims, depths, heads, strict=True)
        )
        self.merges = nn.ModuleList(PatchMerging(d) for d in dims[:-1])
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.decoder = AllMLPDecoder(dims, decoder_dim, num_classes, dropout)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(x)
        height, width = x.shape[-2:]
        tokens = self.embed_norm(x.flatten(2).transpose(1, 2))
        maps = []
        for i, stage in enumerate(self.stages):
            tokens = stage(tokens, height, width)
            maps.append(tokens_to_map(self.norms[i](tokens), height, width))
            if i < len(self.merges):
                tokens, height, width = self.merges[i](tokens, height, width)
        return self.decoder(maps)


@register_model(family="swin", has_attention=True, tiny=True)
def swin_tiny(num_classes: int, **kwargs: Any) -> Swin:
    """Swin with width 24–192, two blocks (regular + shifted) per stage, 8×8 windows: CPU demos and tests."""
    defaults: dict[str, Any] = dict(
        embed_dim=24, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=8, decoder_dim=64, drop_path=0.0
    )
    return Swin(num_classes, **{**defaults, **kwargs})


@register_model(family="swin", has_attention=True, tiny=False)
def swin_t(num_classes: int, **kwargs: Any) -> Swin:
    """Swin-T layout (96 wide, depths 2/2/6/2, 7×7 windows) with an all-MLP decoder."""
    return Swin(num_classes, **kwargs)
