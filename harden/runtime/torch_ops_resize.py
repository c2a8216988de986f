"""ONNX `Resize` (and `Upsample`) for the graph twin, in every mode ONNX defines.

Resize is separable: each resized axis maps every output index to a source coordinate
(`coordinate_transformation_mode`), takes a few neighbours there (edge-clamped) and weighs them
(`nearest_mode`, linear, cubic with `cubic_coeff_a`, `exclude_outside`, antialias on
downsampling), with `tf_crop_and_resize`'s ROI and extrapolation value, `axes` and
`keep_aspect_ratio_policy`. The neighbour indices and weights depend only on shapes and scales,
so they are computed once per call in float64 (numpy, after ONNX's reference
`onnx/reference/ops/op_resize.py`) and applied to the data with torch: a gather and a weighted
sum per axis, differentiable in the data.

The common forms that torch's `F.interpolate` computes identically (linear/cubic with
half_pixel, align_corners or pytorch_half_pixel; nearest with asymmetric/floor) keep that fast
path; the conformance cases (tests/test_twin_conformance.py) hold both paths to ONNX.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harden.runtime.op_table import Attributes, NodeInputs, Value, _t, op, optional

TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _refuse(a: Attributes, x: NodeInputs) -> str | None:
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        return f"attribute mode={mode} is not an ONNX Resize mode"
    if a.get("coordinate_transformation_mode", "half_pixel") not in TRANSFORMS:
        return f"attribute coordinate_transformation_mode={a['coordinate_transformation_mode']} is unknown"
    if a.get("nearest_mode", "round_prefer_floor") not in NEAREST:
        return f"attribute nearest_mode={a['nearest_mode']} is unknown"
    if a.get("keep_aspect_ratio_policy", "stretch") not in ("stretch", "not_larger", "not_smaller"):
        return f"attribute keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']} is unknown"
    if mode == "nearest" and a.get("antialias", 0):
        return "attribute antialias=1 with mode=nearest (ONNX defines antialias for linear and cubic only)"
    return None


def _coefficients(mode: str, a: Attributes, ratios: np.ndarray, scale: float) -> np.ndarray:
    """Weights of the neighbours of each output position: [outputs, taps] (ONNX's get_coeffs)."""
    if mode == "nearest":
        nearest = a.get("nearest_mode", "round_prefer_floor")
        whole = ratios == 1.0  # the coordinate is an integer: the left neighbour is the pixel itself
        if nearest == "round_prefer_floor":
            right = ratios > 0.5
        elif nearest == "round_prefer_ceil":
            right = ratios >= 0.5
        else:
            right = np.full(ratios.shape, nearest == "ceil")
        right = np.where(whole, True, right)
        return np.stack([~right, right], axis=1).astype(np.float64)
    if mode == "linear" and not a.get("antialias", 0):
        return np.stack([1 - ratios, ratios], axis=1)
    if mode == "linear":
        shrink = min(scale, 1.0)
        start = int(np.floor(-1 / shrink) + 1)
        offsets = np.arange(start, 2 - start)[None, :] - ratios[:, None]
        weights = np.clip(1 - np.abs(offsets * shrink), 0, 1)
        return weights / weights.sum(axis=1, keepdims=True)
    cubic_a = float(a.get("cubic_coeff_a", -0.75))
    if not a.get("antialias", 0):
        offsets = np.stack([ratios + 1, ratios, 1 - ratios, 2 - ratios], axis=1)
        return _cubic(offsets, cubic_a)
    shrink = min(scale, 1.0)
    start = int(np.floor(-2 / shrink) + 1)
    offsets = (np.arange(start, 2 - start)[None, :] - ratios[:, None]) * shrink
    weights = _cubic(offsets, cubic_a)
    return weights / weights.sum(axis=1, keepdims=True)


def _cubic(offsets: np.ndarray, cubic_a: float) -> np.ndarray:
    x = np.abs(offsets)
    near = ((cubic_a + 2) * x - (cubic_a + 3)) * x * x + 1
    far = ((cubic_a * x - 5 * cubic_a) * x + 8 * cubic_a) * x - 4 * cubic_a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _source(
    transform: str, size: int, out: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Source coordinate of every output index, and (tf_crop_and_resize) which fall outside.

    Where ONNX's formulas divide by the output length (align_corners, tf_crop_and_resize), the
    reference takes scale · size, ONNX Runtime the whole output size: they differ when a scale
    does not divide the size evenly, and the twin follows ONNX Runtime, the engine."""
    y = np.arange(out, dtype=np.float64)
    length = scale * size  # the unrounded output length (half_pixel_symmetric's adjustment)
    if transform == "align_corners":
        return (np.zeros(out) if out == 1 else y * (size - 1) / (out - 1)), None
    if transform == "asymmetric":
        return y / scale, None
    if transform == "pytorch_half_pixel":
        return (np.full(out, -0.5) if out == 1 else (y + 0.5) / scale - 0.5), None
    if transform == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if transform == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / length)
        return offset + (y + 0.5) / scale - 0.5, None
    low, high = roi if roi is not None else (0.0, 1.0)  # tf_crop_and_resize
    centre = np.full(out, (high - low) * (size - 1) / 2)
    x = (centre if out == 1 else y * (high - low) * (size - 1) / (out - 1)) + low * (size - 1)
    return x, (x < 0) | (x > size - 1)


def _resize_axis(
    data: torch.Tensor, axis: int, out: int, scale: float, a: Attributes, roi: tuple[float, float] | None
) -> torch.Tensor:
    """Resize `data` along `axis` to `out` cells (ONNX's _interpolate_1d_along_axis)."""
    size = data.shape[axis]
    mode = a.get("mode", "nearest")
    x, outside = _source(a.get("coordinate_transformation_mode", "half_pixel"), size, out, scale, roi)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)  # in (0, 1]: the left neighbour is preferred
    weights = _coefficients(mode, a, ratios, scale)
    taps = weights.shape[1]
    pad = math.ceil(taps / 2)
    shifted = x + pad
    base = np.floor(shifted).astype(np.int64)
    frac = shifted - base
    if taps % 2 == 0:
        start = base + np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        start = base + np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    index = start[:, None] + np.arange(taps)[None, :] - pad
    if a.get("exclude_outside", 0):
        weights = np.where((index < 0) | (index >= size), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    index = np.clip(index, 0, size - 1)
    compute = data if data.is_floating_point() else data.double()
    gathered = compute.index_select(axis, torch.from_numpy(index.reshape(-1)).to(data.device))
    gathered = gathered.reshape(*data.shape[:axis], out, taps, *data.shape[axis + 1 :])
    shape = [1] * axis + [out, taps] + [1] * (data.dim() - axis - 1)
    coefficients = torch.from_numpy(weights).to(compute.dtype if compute.dtype != torch.float16 else torch.float32)
    result = (gathered.to(coefficients.dtype) * coefficients.to(data.device).reshape(shape)).sum(dim=axis + 1)
    if outside is not None and outside.any():
        mask = torch.from_numpy(outside).to(data.device).reshape([1] * axis + [out] + [1] * (data.dim() - axis - 1))
        result = torch.where(mask, torch.tensor(float(a.get("extrapolation_value", 0.0)), dtype=result.dtype), result)
    return result.to(compute.dtype)


def _plan(
    data: torch.Tensor, a: Attributes, scales: list[float] | None, sizes: list[int] | None, roi: list[float] | None
) -> tuple[list[int], list[float], list[int], list[tuple[float, float]] | None]:
    """(axes, scale per axis, output size per axis, roi per axis) after `axes` and the keep-aspect policy."""
    rank = data.dim()
    axes = [ax % rank for ax in a.get("axes", [])] or list(range(rank))
    shape = list(data.shape)
    if sizes is not None:
        factors = [sizes[i] / shape[ax] for i, ax in enumerate(axes)]
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            common = min(factors) if policy == "not_larger" else max(factors)
            factors = [common] * len(axes)
            sizes = [int(common * shape[ax] + 0.5) for ax in axes]
        outs = list(sizes)
    else:
        assert scales is not None, "Resize needs scales or sizes"
        factors = list(scales)
        outs = [math.floor(f * shape[ax]) for f, ax in zip(factors, axes, strict=True)]
    ranges = None
    if roi is not None and len(roi) == 2 * len(axes):
        ranges = [(roi[i], roi[len(axes) + i]) for i in range(len(axes))]
    return axes, factors, outs, ranges


def resize(
    data: torch.Tensor,
    a: Attributes,
    scales: list[float] | None,
    sizes: list[int] | None,
    roi: list[float] | None = None,
) -> torch.Tensor:
    """ONNX Resize of `data` given `scales` or `sizes` (for the axes in `a['axes']`, or all)."""
    axes, factors, outs, ranges = _plan(data, a, scales, sizes, roi)
    fast = _fast(data, a, axes, factors, outs, sizes is not None)
    if fast is not None:
        return fast
    result = data
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    for i, (axis, factor, out) in enumerate(zip(axes, factors, outs, strict=True)):
        axis_roi = ranges[i] if ranges is not None else None
        untouched = axis_roi is None or axis_roi == (0.0, 1.0) or transform != "tf_crop_and_resize"
        if math.isclose(factor, 1.0) and out == result.shape[axis] and untouched:
            continue
        result = _resize_axis(result, axis, out, factor, a, axis_roi)
    return result.to(data.dtype) if data.is_floating_point() else _saturate(result, data.dtype)


def _saturate(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return torch.round(value).clamp(info.min, info.max).to(dtype)


def _fast(
    data: torch.Tensor, a: Attributes, axes: list[int], factors: list[float], outs: list[int], by_size: bool
) -> torch.Tensor | None:
    """torch's F.interpolate where it computes exactly ONNX's Resize (None elsewhere)."""
    spatial = data.dim() - 2
    if not data.is_floating_point() or axes != list(range(data.dim())) or factors[:2] != [1.0, 1.0]:
        return None
    if outs[:2] != list(data.shape[:2]) or a.get("antialias", 0) or not 1 <= spatial <= 3:
        return None
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    kwargs: dict[str, Any]
    if mode == "nearest":
        if transform != "asymmetric" or a.get("nearest_mode", "round_prefer_floor") != "floor":
            return None
        kwargs = {"mode": "nearest"}
    elif mode == "linear" or (mode == "cubic" and spatial == 2):
        if transform == "pytorch_half_pixel" and min(outs[2:]) == 1:
            return None  # ONNX maps a one-cell output to −0.5, torch to the centre
        if transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return None
        if mode == "cubic" and (a.get("cubic_coeff_a", -0.75) != -0.75 or a.get("exclude_outside", 0)):
            return None
        names = {1: "linear", 2: "bilinear", 3: "trilinear"}
        kwargs = {
            "mode": "bicubic" if mode == "cubic" else names[spatial],
            "align_corners": transform == "align_corners",
        }
    else:
        return None
    if by_size:  # with sizes, ONNX's scale is out/in, as torch's given a size
        return F.interpolate(data, size=outs[2:], **kwargs)
    return F.interpolate(data, scale_factor=factors[2:], recompute_scale_factor=False, **kwargs)


def _floats(value: Value) -> list[float] | None:
    return [float(v) for v in value.flatten().tolist()] if value is not None and value.numel() else None


@op("Resize", since=11, refuse=_refuse)
def _resize(x: list[Value], a: Attributes) -> torch.Tensor:
    sizes = _floats(optional(x, 3))
    return resize(
        _t(x[0]), a, _floats(optional(x, 2)), [int(s) for s in sizes] if sizes else None, _floats(optional(x, 1))
    )


def _legacy(a: Attributes) -> Attributes:
    """Resize-10 and Upsample: asymmetric coordinates, nearest rounds down (as ONNX Runtime)."""
    return {"mode": a.get("mode", "nearest"), "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}


def _refuse_legacy(a: Attributes, x: NodeInputs) -> str | None:
    mode = a.get("mode", "nearest")
    return (
        None if mode in ("nearest", "linear") else f"attribute mode={mode} (Resize-10/Upsample take nearest or linear)"
    )


@op("Resize", since=10, until=10, refuse=_refuse_legacy)
def _resize_10(x: list[Value], a: Attributes) -> torch.Tensor:
    return resize(_t(x[0]), _legacy(a), _floats(optional(x, 1)), None)


@op("Upsample", until=10, refuse=_refuse_legacy)  # deprecated at opset 10, gone after
def _upsample(x: list[Value], a: Attributes) -> torch.Tensor:
    scales = _floats(optional(x, 1)) or [float(s) for s in a["scales"]]  # an attribute before opset 9
    return resize(_t(x[0]), _legacy(a), scales, None)
