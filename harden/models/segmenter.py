"""Segmenter (Strudel et al. 2021): a plain ViT encoder with a linear or mask-transformer decoder.

Global attention over all patches in every layer; the mask decoder adds attention between the
patch tokens and one learned embedding per class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.models._registry import register_model
from harden.models.attention import MultiHeadSelfAttention
from harden.models.base import DropPath, SegmentationModel, tokens_to_map


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MaskDecoder(nn.Module):
    """Segmenter's mask transformer: class embeddings attend jointly with patch tokens; masks are
    scalar products of L2-normalised patch and class embeddings."""

    def __init__(self, num_classes: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.class_embed = nn.Parameter(torch.randn(1, num_classes, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = patches.shape[1]
        x = torch.cat([patches, self.class_embed.expand(patches.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        patch_emb, class_emb = F.normalize(x[:, :n], dim=-1), F.normalize(x[:, n:], dim=-1)
        masks = self.mask_norm(patch_emb @ class_emb.transpose(1, 2))  # (B, N, K)
        return masks, patch_emb


class Segmenter(SegmentationModel):
    """Args:
    num_classes: K.
    patch: patch size P (the logits come out at 1/P resolution).
    dim, depth, heads: ViT width, number of blocks, heads.
    decoder: "linear" or "mask".
    decoder_depth: mask-decoder blocks.
    grid: position-embedding grid (H/P, W/P) it was trained at; other sizes interpolate it.
    """

    backbone_modules = ("embed", "pos_embed", "blocks", "norm")

    def __init__(
        self,
        num_classes: int,
        patch: int = 16,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        decoder: str = "mask",
        decoder_depth: int = 2,
        grid: tuple[int, int] = (32, 64),
        drop_path: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        if decoder not in ("linear", "mask"):
            raise ValueError(f"Segmenter decoder must be 'linear' or 'mask', not {decoder!r}")
        self.patch = patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, dim, *grid) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, drop_path=drop_path) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder: nn.Module = (
            nn.Linear(dim, num_classes) if decoder == "linear" else MaskDecoder(num_classes, dim, decoder_depth, heads)
        )

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(x)  # (B, dim, H/P, W/P)
        height, width = x.shape[-2:]
        pos: torch.Tensor = self.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=(height, width), mode="bilinear", align_corners=False)
        tokens = (x + pos).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        if isinstance(self.decoder, MaskDecoder):
            masks, features = self.decoder(tokens)
        else:
            masks, features = self.decoder(tokens), tokens
        return tokens_to_map(masks, height, width), tokens_to_map(features, height, width)


@register_model(family="segmenter", has_attention=True, tiny=True)
def segmenter_tiny(num_classes: int, **kwargs: Any) -> Segmenter:
    """ViT with 8×8 patches, width 64, 4 blocks, linear decoder: CPU demos and tests."""
    defaults: dict[str, Any] = dict(patch=8, dim=64, depth=4, heads=2, decoder="linear", grid=(16, 32), drop_path=0.0)
    return Segmenter(num_classes, **{**defaults, **kwargs})


@register_model(family="segmenter", has_attention=True, tiny=True)
def segmenter_tiny_mask(num_classes: int, **kwargs: Any) -> Segmenter:
    """segmenter_tiny with a one-block mask-transformer decoder."""
    defaults: dict[str, Any] = dict(
        patch=8, dim=64, depth=4, heads=2, decoder="mask", decoder_depth=1, grid=(16, 32), drop_path=0.0
    )
    return Segmenter(num_classes, **{**defaults, **kwargs})


@register_model(family="segmenter", has_attention=True, tiny=False)
def segmenter_vit_s(num_classes: int, **kwargs: Any) -> Segmenter:
    """Segmenter ViT-S/16 with a mask decoder, the RAM paper's Segmenter configuration."""
    return Segmenter(num_classes, **kwargs)
