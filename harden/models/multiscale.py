"""Multiscale inference (Arnab et al. §6.1, DeepLab v2): one network, shared weights, several
input resolutions, logits fused per pixel.

The image is resized to each scale, segmented, and the logits brought back to the input size;
"max" keeps each class's largest logit over the scales (DeepLab's max-pooling of the scale
branches), "mean" averages them. The perturbation still lives on the full-resolution image, so
an attack on `MultiScale` crafts against every scale at once — which is why its perturbations
transfer better (§6.3). A single scale 1.0 is the base model exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from harden.errors import InputError
from harden.models.base import SegmentationModel

Fusion = Literal["max", "mean"]
FUSIONS: tuple[str, ...] = ("max", "mean")


def check_scales(scales: tuple[float, ...], fusion: str) -> None:
    """InputError (exit 2) for scales outside (0, 4], repeated scales or an unknown fusion."""
    if not scales:
        raise InputError("give at least one scale, e.g. --scales 0.5,0.75,1")
    bad = [s for s in scales if not 0 < s <= 4]
    if bad:
        raise InputError(f"scales must lie in (0, 4], got {bad}; e.g. --scales 0.5,0.75,1")
    if len(set(scales)) != len(scales):
        raise InputError(f"scales repeat: {list(scales)}")
    if fusion not in FUSIONS:
        raise InputError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")


class MultiScale(SegmentationModel):
    """Run `base` at every scale and fuse the upsampled logits.

    Args:
        base: the segmentation model (its weights are shared by all scales).
        scales: input resolutions relative to the image, e.g. (0.5, 0.75, 1.0).
        fusion: "max" (DeepLab v2) or "mean" (Arnab et al. found both behave alike).
    """

    def __init__(self, base: SegmentationModel, scales: tuple[float, ...], fusion: Fusion = "max") -> None:
        check_scales(tuple(scales), fusion)
        super().__init__(base.num_classes)
        self.base = base
        self.scales = tuple(float(s) for s in scales)
        self.fusion: Fusion = fusion
        self.export_static_size = base.export_static_size
        self.backbone_modules = tuple(f"base.{name}" for name in base.backbone_modules)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) → fused logits (B, K, H, W) and the features of the largest scale."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        size = x.shape[-2:]
        fused: torch.Tensor | None = None
        features = x.new_empty(0)
        for scale in sorted(self.scales, reverse=True):
            logits, scale_features = self._at_scale(x, scale)
            if scale == max(self.scales):
                features = scale_features
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            if fused is None:
                fused = logits
            elif self.fusion == "max":
                fused = torch.maximum(fused, logits)
            else:
                fused = fused + logits
        assert fused is not None
        if self.fusion == "mean":
            fused = fused / len(self.scales)
        return fused, features

    def _at_scale(self, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        if scale != 1.0:  # output size ⌊H·s⌋ × ⌊W·s⌋; a scale factor exports as one Resize node
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        try:
            return self.base.forward_with_features(x)
        except (RuntimeError, InputError) as err:  # InputError: below the network's minimum side
            if "size" not in str(err) and "Kernel" not in str(err) and "minimum side" not in str(err):
                raise
            raise InputError(
                f"at scale {scale:g} the image is {x.shape[-2]}×{x.shape[-1]}, too small for this model ({err}); "
                "use larger images (--image-size) or larger scales"
            ) from err


def unwrap_scales(model: SegmentationModel) -> SegmentationModel:
    """The single-scale network inside a `MultiScale` (the model itself otherwise)."""
    return model.base if isinstance(model, MultiScale) else model
