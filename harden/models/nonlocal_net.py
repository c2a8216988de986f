"""Non-local network: a dilated ResNet with a global-attention (non-local) block before the head.

Wang et al. 2018, "Non-local Neural Networks", embedded-Gaussian form: every position attends
to every position of a (sub-sampled) key map. The RAM paper's "Nonlocal" model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.models._registry import register_model
from harden.models.attention import AttentionCore
from harden.models.base import ConvBNReLU, SegmentationModel, map_to_tokens, tokens_to_map
from harden.models.resnet import DilatedResNet


class NonLocalBlock(nn.Module):
    """y = x + W·softmax(θ(x)·φ(x)ᵀ)·g(x), with keys/values max-pooled by `subsample`.

    Args:
        channels: input width.
        inner: width of θ, φ, g.
        subsample: stride of the max-pooling of keys/values (1 = none); N keys < N queries.
    """

    def __init__(self, channels: int, inner: int, subsample: int = 2) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.pool = nn.MaxPool2d(subsample) if subsample > 1 else nn.Identity()
        self.core = AttentionCore(scale=1.0)  # the embedded-Gaussian form has no 1/sqrt(d)
        norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(norm.weight)  # the block starts as the identity, as in the paper
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q = map_to_tokens(self.theta(x))[:, None]  # (B, 1, H·W, inner)
        k = map_to_tokens(self.pool(self.phi(x)))[:, None]  # (B, 1, N, inner)
        v = map_to_tokens(self.pool(self.g(x)))[:, None]
        y = tokens_to_map(self.core(q, k, v)[:, 0], h, w)
        return x + self.out(y)


class NonLocalNet(SegmentationModel):
    backbone_modules = ("backbone",)

    def __init__(self, num_classes: int, backbone: DilatedResNet, head_width: int, dropout: float = 0.1) -> None:
        super().__init__(num_classes)
        self.backbone = backbone
        self.reduce = ConvBNReLU(backbone.out_channels, head_width, 3)
        self.nonlocal_block = NonLocalBlock(head_width, head_width // 2)
        self.fuse = ConvBNReLU(head_width, head_width, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_width, num_classes, 1))

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.fuse(self.nonlocal_block(self.reduce(self.backbone(x))))
        return self.classifier(features), features


@register_model(family="nonlocal", has_attention=True, tiny=True)
def nonlocal_tiny(num_classes: int, **kwargs: Any) -> NonLocalNet:
    """Non-local block on a 4-block ResNet: CPU demos and tests."""
    return NonLocalNet(num_classes, DilatedResNet(), head_width=64, **kwargs)


@register_model(family="nonlocal", has_attention=True, tiny=False)
def nonlocal_r50(num_classes: int, **kwargs: Any) -> NonLocalNet:
    """Non-local block on a dilated ResNet-50 layout, the RAM paper's Nonlocal model."""
    backbone = DilatedResNet((3, 4, 6, 3), (64, 128, 256, 512), bottleneck=True, stem=64)
    return NonLocalNet(num_classes, backbone, head_width=512, **kwargs)
