"""Training augmentation on (image (3, H, W) float in [0, 1], label (H, W) int64) pairs.

Random scale, random crop (padding with 0 / the ignore index when the image is smaller than the
crop) and horizontal flip, as in the papers' training recipes. Randomness comes from a
`torch.Generator` the caller seeds, so augmentation is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harden.data.classes import IGNORE_INDEX


@dataclass(frozen=True)
class TrainAugment:
    """Args:
    crop: (height, width) of the output.
    scale: range of the random rescaling factor.
    flip: flip horizontally with probability 0.5.
    """

    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.scale
        factor = low + (high - low) * torch.rand((), generator=generator).item()
        image, label = rescale(image, label, factor)
        image, label = random_crop(image, label, self.crop, generator)
        if self.flip and torch.rand((), generator=generator).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


def rescale(image: torch.Tensor, label: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear for the image, nearest for the label (labels must not be interpolated)."""
    if factor == 1.0:
        return image, label
    h, w = image.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image.clamp_(0, 1), label


def random_crop(
    image: torch.Tensor, label: torch.Tensor, crop: tuple[int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    ch, cw = crop
    h, w = image.shape[-2:]
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        h, w = image.shape[-2:]
    top = int(torch.randint(0, h - ch + 1, (), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (), generator=generator))
    return image[:, top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
