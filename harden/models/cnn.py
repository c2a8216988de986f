"""CNN-only segmentation models (no attention): PSPNet and DeepLabv3 on a dilated ResNet.

The DDC-AT and RP-PGD papers evaluate these; they are the non-attention baselines for RAM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.models._registry import register_model
from harden.models.base import ConvBNReLU, SegmentationModel
from harden.models.resnet import DilatedResNet


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: pooled context at several bin sizes, concatenated."""

    def __init__(self, cin: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = cin // len(bins)
        self.branches = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(cin, reduced, 1)) for b in bins)
        self.out_channels = cin + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return torch.cat([x, *pooled], dim=1)


class ASPP(nn.Module):
    """DeepLabv3's atrous spatial pyramid pooling with an image-level pooling branch."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(cin, cout, 1), *(ConvBNReLU(cin, cout, 3, dilation=r) for r in rates)]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(cin, cout, 1))
        self.project = ConvBNReLU(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([*(b(x) for b in self.branches), pooled], dim=1))


class PSPNet(SegmentationModel):
    """PSPNet (Zhao et al. 2017): dilated ResNet + pyramid pooling + 3×3 conv + classifier."""

    backbone_modules = ("backbone",)

    # Adaptive average pooling into 2×2, 3×3 and 6×6 bins has no ONNX op: the exporter's
    # decomposition bakes the bin boundaries of the traced size, so the export fixes H and W.
    export_static_size = "adaptive pooling into fixed bins bakes the traced size into the ONNX graph"

    def __init__(self, num_classes: int, backbone: DilatedResNet, head_width: int, dropout: float = 0.1) -> None:
        super().__init__(num_classes)
        self.backbone = backbone
        self.ppm = PyramidPooling(backbone.out_channels)
        self.fuse = ConvBNReLU(self.ppm.out_channels, head_width, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_width, num_classes, 1))

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.fuse(self.ppm(self.backbone(x)))
        return self.classifier(features), features


class DeepLabV3(SegmentationModel):
    """DeepLabv3 (Chen et al. 2017): dilated ResNet + ASPP + classifier."""

    backbone_modules = ("backbone",)

    def __init__(
        self, num_classes: int, backbone: DilatedResNet, head_width: int, rates: tuple[int, ...], dropout: float = 0.1
    ) -> None:
        super().__init__(num_classes)
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, head_width, rates)
        self.fuse = ConvBNReLU(head_width, head_width, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_width, num_classes, 1))

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.fuse(self.aspp(self.backbone(x)))
        return self.classifier(features), features


@register_model(family="pspnet", has_attention=False, tiny=True)
def pspnet_tiny(num_classes: int, **kwargs: Any) -> PSPNet:
    """PSPNet on a 4-block ResNet (widths 16–128): CPU demos and tests."""
    return PSPNet(num_classes, DilatedResNet(), head_width=64, **kwargs)


@register_model(family="pspnet", has_attention=False, tiny=False)
def pspnet_r50(num_classes: int, **kwargs: Any) -> PSPNet:
    """PSPNet on a dilated ResNet-50 layout, as in the DDC-AT and RP-PGD papers."""
    backbone = DilatedResNet((3, 4, 6, 3), (64, 128, 256, 512), bottleneck=True, stem=64)
    return PSPNet(num_classes, backbone, head_width=512, **kwargs)


@register_model(family="deeplabv3", has_attention=False, tiny=True)
def deeplabv3_tiny(num_classes: int, **kwargs: Any) -> DeepLabV3:
    """DeepLabv3 on a 4-block ResNet, ASPP rates 2/4/6 for small inputs: CPU demos and tests."""
    return DeepLabV3(num_classes, DilatedResNet(), head_width=64, rates=(2, 4, 6), **kwargs)


@register_model(family="deeplabv3", has_attention=False, tiny=False)
def deeplabv3_r50(num_classes: int, **kwargs: Any) -> DeepLabV3:
    """DeepLabv3 on a dilated ResNet-50 layout (output stride 8, ASPP rates 12/24/36)."""
    backbone = DilatedResNet((3, 4, 6, 3), (64, 128, 256, 512), bottleneck=True, stem=64)
    return DeepLabV3(num_classes, backbone, head_width=256, rates=(12, 24, 36), **kwargs)
