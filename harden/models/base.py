"""What every segmentation model in the registry is: pixels in [0, 1] in, logits out.

`SegmentationModel.forward(x)` takes float RGB (B, 3, H, W) in [0, 1], normalises it inside the
model (so the threat model lives in pixel space, docs/design.md §2) and returns logits (B, K, H, W)
at input resolution. `forward_with_features` also returns the decoder's penultimate feature map,
the intermediate representation RP-PGD's prototype loss works on.

Subclasses implement only `decode(normalised) -> (low-resolution logits, features)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harden.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationModel(nn.Module):
    """Base class. Args: num_classes: number of output classes K."""

    # Why ONNX export must fix H and W for this model (None: batch, height and width dynamic).
    export_static_size: str | None = None
    # The submodules (and parameters) that form the backbone, the part a classifier shares:
    # what PIR-AT initialises from a robust classifier (`--init-backbone`).
    backbone_modules: tuple[str, ...] = ()
    # The smallest image side the network's strided stem and pooling can take (refused below it
    # with exit 2 before the forward pass, instead of a convolution error deep inside).
    min_input_side: int = 16

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a segmentation model needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image (B, 3, H, W) → (logits (B, K, h, w), features (B, C, h', w'))."""
        raise NotImplementedError

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_side:
            raise InputError(
                f"images of {x.shape[-2]}×{x.shape[-1]} pixels are smaller than {type(self).__name__}'s minimum side "
                f"of {self.min_input_side}; use larger images (--image-size)"
            )
        logits, features = self.decode((x - self.mean) / self.std)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel // 2)
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H·W, C) → (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C)."""
    return x.flatten(2).transpose(1, 2)
