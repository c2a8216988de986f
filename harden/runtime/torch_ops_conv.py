"""Windowed ONNX operators for the graph twin: Conv, ConvTranspose and the pools, in every padding
form ONNX allows — explicit pads of any size and asymmetry, auto_pad SAME_UPPER/SAME_LOWER/VALID
(TensorFlow converters write them), dilations, ceil_mode, ConvTranspose's output_shape.

torch's layers take symmetric padding of at most half a kernel, so every op here pads explicitly
first (`F.pad`) and runs torch's layer without padding; the window arithmetic (`window_pads`,
`ceil_extra`) follows the ONNX operator definitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harden.runtime.op_table import Attributes, NodeInputs, Value, _t, op, optional, register

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def _refuse_auto_pad(a: Attributes, x: NodeInputs) -> str | None:
    if a.get("auto_pad", "NOTSET") not in AUTO_PADS:
        return f"attribute auto_pad={a['auto_pad']} is not an ONNX value"
    return None


def window_pads(
    a: Attributes, sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis from `pads` or `auto_pad` (ONNX's Conv and pools)."""
    dims = len(sizes)
    auto = a.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return [(0, 0)] * dims
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
        return pads
    flat = list(a.get("pads", [0] * (2 * dims)))
    return [(flat[i], flat[dims + i]) for i in range(dims)]


def symmetric(pads: list[tuple[int, int]], kernel: list[int] | None = None) -> list[int] | None:
    """The per-axis padding torch's layers take, where `pads` are the same at both ends (and, for
    the pools, at most half the kernel, torch's limit); None where they are not."""
    if any(begin != end for begin, end in pads):
        return None
    if kernel is not None and any(2 * begin > k for (begin, _), k in zip(pads, kernel, strict=True)):
        return None
    return [begin for begin, _ in pads]


def torch_pad_list(pads: list[tuple[int, int]]) -> list[int]:
    """[(b1, e1), (b2, e2), …] → F.pad's list, which starts at the last axis."""
    flat: list[int] = []
    for begin, end in reversed(pads):
        flat += [begin, end]
    return flat


def ceil_extra(
    sizes: list[int],
    pads: list[tuple[int, int]],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    ceil: bool,
) -> list[int]:
    """Padding to add at the end of each axis so that torch's floor-mode window count equals ONNX's
    (with ceil_mode, a last window may overhang the end but must start inside the input or its
    begin padding)."""
    extra = []
    for size, (begin, end), k, s, d in zip(sizes, pads, kernel, strides, dilations, strict=True):
        span = size + begin + end - ((k - 1) * d + 1)
        count = (math.ceil(span / s) if ceil else span // s) + 1
        if ceil and (count - 1) * s >= size + begin:
            count -= 1
        extra.append(max(0, (count - 1) * s + (k - 1) * d + 1 - (size + begin + end)))
    return extra


def _window(
    a: Attributes, data: torch.Tensor, kernel: list[int] | None = None
) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    dims = data.dim() - 2
    kernel = list(kernel if kernel is not None else a["kernel_shape"])
    strides = list(a.get("strides", [1] * dims))
    dilations = list(a.get("dilations", [1] * dims))
    return kernel, strides, dilations, window_pads(a, list(data.shape[2:]), kernel, strides, dilations)


@op("Conv", refuse=_refuse_auto_pad)
def _conv(x: list[Value], a: Attributes) -> torch.Tensor:
    data, weight = _t(x[0]), _t(x[1])
    dims = data.dim() - 2
    _, strides, dilations, pads = _window(a, data, list(weight.shape[2:]))
    padding: list[int] | int = symmetric(pads) or 0
    if not padding and any(p for pair in pads for p in pair):  # uneven: pad first (a copy torch avoids otherwise)
        data = F.pad(data, torch_pad_list(pads))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return conv(
        data, weight, optional(x, 2), stride=strides, padding=padding, dilation=dilations, groups=a.get("group", 1)
    )


def _as_float(data: torch.Tensor) -> torch.Tensor:
    return data if data.is_floating_point() else data.double()  # torch pools only floats; int8/uint8 exact in float64


@op("MaxPool", refuse=_refuse_auto_pad)
def _max_pool(x: list[Value], a: Attributes) -> torch.Tensor:
    original = _t(x[0])
    data = _as_float(original)
    dims = data.dim() - 2
    kernel, strides, dilations, pads = _window(a, data)
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    ceil = bool(a.get("ceil_mode", 0))
    padding = symmetric(pads, kernel)
    if padding is not None and all(d == 1 for d in dilations):  # torch's own padding: the common, faster case
        return pool(data, kernel, stride=strides, padding=padding, ceil_mode=ceil).to(original.dtype)
    extra = ceil_extra(list(data.shape[2:]), pads, kernel, strides, dilations, ceil)
    padded = [(begin, end + more) for (begin, end), more in zip(pads, extra, strict=True)]
    if any(p for pair in padded for p in pair):
        data = F.pad(data, torch_pad_list(padded), value=float("-inf"))
    return pool(data, kernel, stride=strides, padding=0, dilation=dilations).to(original.dtype)


@op("AveragePool", refuse=_refuse_auto_pad)
def _average_pool(x: list[Value], a: Attributes) -> torch.Tensor:
    """The sum over each window's padded input divided by the window's count: the cells of the
    input, plus those of the explicit pads when count_include_pad (never ceil_mode's overhang)."""
    data = _t(x[0])
    kernel, strides, dilations, pads = _window(a, data)
    padding, ceil = symmetric(pads, kernel), bool(a.get("ceil_mode", 0))
    if padding is not None and all(d == 1 for d in dilations):  # torch's own padding: the common, faster case
        pool: Callable[..., torch.Tensor] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[data.dim() - 2]
        return pool(
            data,
            kernel,
            stride=strides,
            padding=padding,
            ceil_mode=ceil,
            count_include_pad=bool(a.get("count_include_pad", 0)),
        )
    extra = ceil_extra(list(data.shape[2:]), pads, kernel, strides, dilations, bool(a.get("ceil_mode", 0)))
    full = torch_pad_list([(begin, end + more) for (begin, end), more in zip(pads, extra, strict=True)])
    ones = torch.ones((1, 1, *data.shape[2:]), dtype=data.dtype, device=data.device)
    if a.get("count_include_pad", 0):
        counted = F.pad(F.pad(ones, torch_pad_list(pads), value=1.0), torch_pad_list([(0, m) for m in extra]))
    else:
        counted = F.pad(ones, full)
    window_sum = _window_sum(kernel, strides, dilations)
    return window_sum(F.pad(data, full)) / window_sum(counted)


def _window_sum(kernel: list[int], strides: list[int], dilations: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sum over every (dilated) window, per channel, without padding."""
    dims = len(kernel)

    def run(data: torch.Tensor) -> torch.Tensor:
        if all(d == 1 for d in dilations):
            pool: Callable[..., torch.Tensor] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
            return pool(data, kernel, stride=strides, padding=0) * math.prod(kernel)
        channels = data.shape[1]
        weight = torch.ones((channels, 1, *kernel), dtype=data.dtype, device=data.device)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        return conv(data, weight, stride=strides, dilation=dilations, groups=channels)

    return run


@op("GlobalAveragePool")
def _global_average_pool(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    return data.mean(dim=tuple(range(2, data.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    return data.amax(dim=tuple(range(2, data.dim())), keepdim=True)


@op("LpPool", refuse=_refuse_auto_pad)
def _lp_pool(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    p = float(a.get("p", 2))
    kernel, strides, dilations, pads = _window(a, data)
    extra = ceil_extra(list(data.shape[2:]), pads, kernel, strides, dilations, bool(a.get("ceil_mode", 0)))
    full = torch_pad_list([(begin, end + more) for (begin, end), more in zip(pads, extra, strict=True)])
    return _window_sum(kernel, strides, dilations)(F.pad(data.abs() ** p, full)) ** (1.0 / p)


register(
    "",
    "GlobalLpPool",
    lambda x, a: (
        _t(x[0])
        .abs()
        .pow(float(a.get("p", 2)))
        .sum(dim=tuple(range(2, _t(x[0]).dim())), keepdim=True)
        .pow(1.0 / float(a.get("p", 2)))
    ),
)


@op("ConvTranspose", refuse=_refuse_auto_pad)
def _conv_transpose(x: list[Value], a: Attributes) -> torch.Tensor:
    """Transposed convolution without padding, then ONNX's pads cropped off (or, where an
    output_shape asks for more than the full result, zeros added)."""
    data, weight = _t(x[0]), _t(x[1])
    dims = data.dim() - 2
    kernel = list(weight.shape[2:])
    strides, dilations = list(a.get("strides", [1] * dims)), list(a.get("dilations", [1] * dims))
    extra = list(a.get("output_padding", [0] * dims))
    sizes = list(data.shape[2:])
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = (
            list(a["output_shape"])[-dims:]
            if "output_shape" in a
            else [n * s for n, s in zip(sizes, strides, strict=True)]
        )
        pads = []
        for i in range(dims):
            total = strides[i] * (sizes[i] - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1 - wanted[i]
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
    elif auto == "VALID":
        pads = [(0, 0)] * dims
    else:
        flat = list(a.get("pads", [0] * (2 * dims)))
        pads = [(flat[i], flat[dims + i]) for i in range(dims)]
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    full = conv(data, weight, None, stride=strides, padding=0, groups=a.get("group", 1), dilation=dilations)
    # the pads come off each end; output_padding (or an output_shape beyond the full result) adds
    # cells at the end that no input reaches: F.pad's negative widths crop, positive ones add zeros
    crop = [(begin, end - more) for (begin, end), more in zip(pads, extra, strict=True)]
    if all(c >= 0 for pair in crop for c in pair):  # the usual case: a view, no copy
        index = [slice(None), slice(None)] + [slice(b, n - e) for (b, e), n in zip(crop, full.shape[2:], strict=True)]
        full = full[tuple(index)]
    else:
        full = F.pad(full, [-c for c in torch_pad_list(crop)])
    bias = optional(x, 2)
    return full if bias is None else full + bias.reshape(1, -1, *([1] * dims))
