"""A dilated ResNet backbone (output stride 8), as in PSPNet, DeepLabv3 and non-local networks.

Stages 3 and 4 keep resolution and dilate instead of striding, the standard choice for dense
prediction. BasicBlock for tiny CPU models, Bottleneck for the ResNet-50-like configuration.
"""

from __future__ import annotations

import torch
from torch import nn

from harden.models.base import ConvBNReLU


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = ConvBNReLU(cin, width, 3, stride, dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(width, cout, 3, 1, dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            ConvBNReLU(cin, width, 1),
            ConvBNReLU(width, width, 3, stride, dilation),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class DilatedResNet(nn.Module):
    """ResNet with output stride 8. Returns the stage-4 map; `out_channels` says its width.

    Args:
        depths: blocks per stage.
        widths: block widths per stage (Bottleneck multiplies the output by 4).
        bottleneck: use Bottleneck blocks instead of BasicBlocks.
        stem: stem width.
    """

    def __init__(
        self,
        depths: tuple[int, int, int, int] = (1, 1, 1, 1),
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
        bottleneck: bool = False,
        stem: int = 16,
    ) -> None:
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.stem = nn.Sequential(ConvBNReLU(3, stem, 3, 2), ConvBNReLU(stem, stem, 3), nn.MaxPool2d(3, 2, 1))  # /4
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        stages, cin = [], stem
        for depth, width, stride, dilation in zip(depths, widths, strides, dilations, strict=True):
            blocks = []
            for i in range(depth):
                blocks.append(block(cin, width, stride if i == 0 else 1, dilation))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C, H/8, W/8)
