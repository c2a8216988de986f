"""Decoders shared by several model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harden.models.base import ConvBNReLU


class AllMLPDecoder(nn.Module):
    """SegFormer's all-MLP decoder (Xie et al. 2021 §3.2), also used on Swin's stages here.

    Each stage's map is projected to `dim` channels, upsampled to the first (finest) map's
    resolution, concatenated, fused by a 1×1 conv and classified.

    Args:
        in_dims: channels of the stage maps, finest first.
        dim: decoder width.
        num_classes: K.
        dropout: channel dropout before the classifier.
    """

    def __init__(self, in_dims: tuple[int, ...] | list[int], dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Conv2d(d, dim, 1) for d in in_dims)
        self.fuse = ConvBNReLU(dim * len(in_dims), dim, 1)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(dim, num_classes, 1))

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """maps: stage outputs, finest first → (logits, fused features) at the finest resolution."""
        size = maps[0].shape[-2:]
        upsampled = [
            F.interpolate(lin(m), size=size, mode="bilinear", align_corners=False)
            for lin, m in zip(self.linear, maps, strict=True)
        ]
        features = self.fuse(torch.cat(upsampled, dim=1))
        return self.classifier(features), features
