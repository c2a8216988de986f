"""Inference options around a registry network: multiscale fusion, then a CRF (Arnab et al. §6–7).

`compose(network, scales=..., crf=...)` builds `WithCRF(MultiScale(network))` (either part
optional) — the order DeepLab v2 uses: fuse the scales, then run mean-field inference on the
fused logits. `network_of(model)` undoes it. Weights live in the network; the CRF adds its two
kernel weights.
"""

from __future__ import annotations

from harden.models.base import SegmentationModel
from harden.models.crf import CRFConfig, WithCRF
from harden.models.multiscale import Fusion, MultiScale


def compose(
    network: SegmentationModel,
    *,
    scales: tuple[float, ...] | None = None,
    fusion: Fusion = "max",
    crf: CRFConfig | None = None,
) -> SegmentationModel:
    """`network` run at `scales` (None: as it is) and followed by a mean-field CRF (None: none)."""
    model = network
    if scales is not None:
        model = MultiScale(model, scales, fusion)
    if crf is not None:
        model = WithCRF(model, crf)
    return model


def network_of(model: SegmentationModel) -> SegmentationModel:
    """The single-scale network without CRF inside a composed model."""
    while isinstance(model, (WithCRF, MultiScale)):
        model = model.base
    return model
