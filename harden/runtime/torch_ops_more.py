"""More ONNX operators for the graph twin: the transformer ops that torch's exporter writes at
opset 23 (`Attention` for scaled_dot_product_attention, `RMSNormalization` for rms_norm), and
the less common layers of segmentation and vision models (GridSample, LRN, Shrink,
LpNormalization, MeanVarianceNormalization, OneHot, ScatterElements, NonZero, Swish, EyeLike,
CumProd, hyperbolic functions, bitwise ops). Each follows its ONNX definition and the reference
implementation in `onnx/reference/ops/`; tests/test_twin_conformance.py holds them to ONNX's
node cases and to ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harden.runtime.op_table import Attributes, NodeInputs, Op, Value, _ints, _t, op, optional, register
from harden.runtime.torch_ops import DTYPES

# -- transformers (opset 23) --------------------------------------------------------------------


def _masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where a row masked everywhere (all −inf) gives zeros, not NaN."""
    top = scores.amax(dim=-1, keepdim=True)
    safe = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    weights = torch.exp(scores - safe)
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, sequence, heads·size] → [batch, heads, sequence, size]."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


@op("Attention", since=23, outputs=4)
def _attention(x: list[Value], a: Attributes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX Attention (opsets 23–25): Y, present_key, present_value and the QK output of
    `qk_matmul_output_mode`; 3-D inputs with q_num_heads/kv_num_heads or 4-D ones; masks
    (boolean or additive), is_causal, past key/value, nonpad_kv_seqlen, softcap, sliding windows,
    grouped-query heads."""
    query, key, value = _t(x[0]), _t(x[1]), _t(x[2])
    mask, past_key, past_value, nonpad = optional(x, 3), optional(x, 4), optional(x, 5), optional(x, 6)
    flat = query.dim() == 3
    if flat:
        query = _heads(query, int(a["q_num_heads"]))
        key, value = _heads(key, int(a["kv_num_heads"])), _heads(value, int(a["kv_num_heads"]))
    root_scale = math.sqrt(a["scale"] if a.get("scale") is not None else 1 / math.sqrt(query.shape[3]))
    if past_key is not None and past_value is not None:
        key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)
    present_key, present_value = key, value
    q_len, kv_len = query.shape[2], key.shape[2]
    dtype, device = query.dtype, query.device
    bias = torch.zeros((q_len, kv_len), dtype=dtype, device=device)
    if mask is not None and mask.shape[-1] < kv_len:  # a mask shorter than the keys: the rest masked
        mask = F.pad(mask, [0, kv_len - mask.shape[-1]], value=False if mask.dtype == torch.bool else -math.inf)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.where(mask, torch.zeros((), dtype=dtype), torch.full((), -math.inf, dtype=dtype))
    rows = torch.arange(q_len, device=device).reshape(-1, 1)
    cols = torch.arange(kv_len, device=device).reshape(1, -1)
    if nonpad is not None and past_key is None:
        offset: torch.Tensor | int = (nonpad.reshape(-1) - q_len).reshape(-1, 1, 1, 1)
    else:
        offset = past_key.shape[2] if past_key is not None else 0
    if a.get("is_causal", 0):
        base = mask if mask is not None else bias
        bias = base + torch.where(cols <= rows + offset, 0.0, -math.inf).to(dtype)
    elif mask is not None:
        bias = bias + mask
    left, right = int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1))
    if left >= 0 or right >= 0:
        behind = rows + offset - cols
        allowed = torch.ones_like(behind, dtype=torch.bool)
        if left >= 0:
            allowed &= behind <= left
        if right >= 0:
            allowed &= -behind <= right
        bias = bias + torch.where(allowed, 0.0, -math.inf).to(dtype)
    if nonpad is not None:
        padding = torch.arange(kv_len, device=device).reshape(1, -1) < nonpad.reshape(-1, 1)
        bias = bias + torch.where(padding, 0.0, -math.inf).to(dtype).reshape(-1, 1, 1, kv_len)
    if query.shape[1] != key.shape[1]:  # grouped-query attention: each key/value head serves a group
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    scores = torch.matmul(query * root_scale, (key * root_scale).transpose(-1, -2))
    softcap = float(a.get("softcap", 0.0) or 0.0)
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    qk_output = scores
    with_bias = scores + bias
    mode = int(a.get("qk_matmul_output_mode", 0))
    if mode == 2:  # masked cells: the reference writes −inf, ONNX Runtime the lowest float; the twin follows the engine
        qk_output = with_bias.clamp(min=torch.finfo(with_bias.dtype).min)
    precision = a.get("softmax_precision")
    probabilities = _masked_softmax(with_bias.to(DTYPES[int(precision)]) if precision else with_bias)
    masked_rows = torch.isneginf(bias.amax(dim=-1, keepdim=True))
    probabilities = torch.where(masked_rows, torch.zeros_like(probabilities), probabilities)
    if mode == 3:
        qk_output = probabilities
    out = torch.matmul(probabilities.to(dtype), value)
    if flat:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    return out, present_key, present_value, qk_output.to(dtype)


def _refuse_rms_stash(a: Attributes, x: NodeInputs) -> str | None:
    return None if a.get("stash_type", 1) == 1 else f"attribute stash_type={a['stash_type']} (ONNX defines 1)"


@op("RMSNormalization", since=23, refuse=_refuse_rms_stash)
def _rms_normalization(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    axis = a.get("axis", -1) % data.dim()
    value = data.float() if data.dtype in (torch.float16, torch.bfloat16) else data
    mean_square = value.square().mean(dim=tuple(range(axis, data.dim())), keepdim=True)
    return (value * torch.rsqrt(mean_square + a.get("epsilon", 1e-5))).to(data.dtype) * _t(x[1])


# -- layers -------------------------------------------------------------------------------------


GRID_MODES = {
    "bilinear": "bilinear",
    "linear": "bilinear",
    "nearest": "nearest",
    "bicubic": "bicubic",
    "cubic": "bicubic",
}


def _refuse_grid(a: Attributes, x: NodeInputs) -> str | None:
    if a.get("mode", "linear") not in GRID_MODES:
        return f"attribute mode={a['mode']} is not a GridSample mode"
    if a.get("padding_mode", "zeros") not in ("zeros", "border", "reflection"):
        return f"attribute padding_mode={a['padding_mode']} is not a GridSample padding mode"
    return None


@op("GridSample", since=16, refuse=_refuse_grid)
def _grid_sample(x: list[Value], a: Attributes) -> torch.Tensor:
    """ONNX GridSample was defined after torch's grid_sample: the same modes, padding and corners."""
    return F.grid_sample(
        _t(x[0]),
        _t(x[1]).to(_t(x[0]).dtype),
        mode=GRID_MODES[a.get("mode", "linear")],
        padding_mode=a.get("padding_mode", "zeros"),
        align_corners=bool(a.get("align_corners", 0)),
    )


@op("LRN")
def _lrn(x: list[Value], a: Attributes) -> torch.Tensor:
    """Across channels: x / (bias + alpha/size · Σ x² over the window)^beta, the window taking
    floor((size−1)/2) channels before and ceil((size−1)/2) after."""
    data, size = _t(x[0]), int(a["size"])
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    squares = F.pad(data.square().unsqueeze(1), [0, 0] * (data.dim() - 2) + [before, after])
    window = squares.unfold(2, size, 1).sum(-1).squeeze(1)
    return data / (a.get("bias", 1.0) + a.get("alpha", 1e-4) / size * window) ** a.get("beta", 0.75)


@op("Shrink")
def _shrink(x: list[Value], a: Attributes) -> torch.Tensor:
    data, bias, lambd = _t(x[0]), a.get("bias", 0.0), a.get("lambd", 0.5)
    zero = torch.zeros_like(data)
    return torch.where(data < -lambd, data + bias, torch.where(data > lambd, data - bias, zero)).to(data.dtype)


@op("LpNormalization")
def _lp_normalization(x: list[Value], a: Attributes) -> torch.Tensor:
    data, axis, p = _t(x[0]), a.get("axis", -1), int(a.get("p", 2))
    norm = data.abs().pow(p).sum(dim=axis, keepdim=True).pow(1.0 / p)
    return torch.where(norm == 0, torch.zeros_like(data), data / torch.where(norm == 0, torch.ones_like(norm), norm))


@op("MeanVarianceNormalization")
def _mean_variance_normalization(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    axes = [ax % data.dim() for ax in a.get("axes", [0, 2, 3])]
    mean = data.mean(dim=axes, keepdim=True)
    variance = data.square().mean(dim=axes, keepdim=True) - mean.square()  # ONNX's function body
    return (data - mean) / (variance.sqrt() + 1e-9)


register("", "Swish", lambda x, a: _t(x[0]) * torch.sigmoid(a.get("alpha", 1.0) * _t(x[0])), since=24)

# -- indexing -----------------------------------------------------------------------------------


@op("OneHot", since=9)
def _one_hot(x: list[Value], a: Attributes) -> torch.Tensor:
    indices, depth, values = _t(x[0]), int(_t(x[1]).flatten()[0].item()), _t(x[2])
    axis = a.get("axis", -1) % (indices.dim() + 1)
    whole = indices.long()  # float indices are truncated, as ONNX Runtime does
    whole = torch.where(whole < 0, whole + depth, whole)
    classes = torch.arange(depth, device=indices.device).reshape([depth] + [1] * (indices.dim() - axis))
    hot = classes == whole.unsqueeze(axis)
    off, on = values[0], values[1]
    return torch.where(hot, on, off)


SCATTER = {"none": "", "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _refuse_scatter(a: Attributes, x: NodeInputs) -> str | None:
    reduction = a.get("reduction", "none")
    return None if reduction in SCATTER else f"attribute reduction={reduction} is not an ONNX reduction"


@op("ScatterElements", since=11, refuse=_refuse_scatter)
def _scatter_elements(x: list[Value], a: Attributes) -> torch.Tensor:
    data, indices, updates = _t(x[0]), _t(x[1]).long(), _t(x[2])
    axis = a.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    reduction = a.get("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, indices, updates)
    return data.scatter_reduce(axis, indices, updates, SCATTER[reduction], include_self=True)


register("", "Scatter", _scatter_elements, until=10)  # the deprecated name (opsets 9–10)


@op("NonZero", since=9)
def _non_zero(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.nonzero(_t(x[0])).T.contiguous()


@op("EyeLike", since=9)
def _eye_like(x: list[Value], a: Attributes) -> torch.Tensor:
    rows, cols = _t(x[0]).shape
    dtype = DTYPES[int(a["dtype"])] if "dtype" in a else _t(x[0]).dtype
    diagonal = torch.arange(cols).reshape(1, -1) - torch.arange(rows).reshape(-1, 1) == int(a.get("k", 0))
    return diagonal.to(dtype)


@op("CumProd", since=26)
def _cum_prod(x: list[Value], a: Attributes) -> torch.Tensor:
    data, axis = _t(x[0]), _ints(x[1])[0]
    if a.get("reverse", 0):
        data = data.flip(axis)
    out = data.cumprod(axis)
    if a.get("exclusive", 0):  # shift by one: the product of the elements before each one
        ones = torch.ones_like(out.narrow(axis, 0, 1))
        out = torch.cat([ones, out.narrow(axis, 0, data.shape[axis] - 1)], dim=axis)
    return out.flip(axis) if a.get("reverse", 0) else out


# -- elementwise --------------------------------------------------------------------------------

UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "BitwiseNot": torch.bitwise_not,
}


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda x, a: fn(_t(x[0]))


for _name, _fn in UNARY.items():
    register("", _name, _unary(_fn))
register("", "BitwiseOr", lambda x, a: torch.bitwise_or(_t(x[0]), _t(x[1])), since=18)
register("", "BitwiseXor", lambda x, a: torch.bitwise_xor(_t(x[0]), _t(x[1])), since=18)
