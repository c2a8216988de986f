"""More standard ONNX operators for the graph twin: what real segmentation exports contain
besides harden's own (UNets, HF SegFormer, MMSeg models; TorchScript and dynamo exporters).

Activations (LeakyRelu … Mish, Gelu of opset 20), normalisations (InstanceNormalization,
GroupNormalization), ConvTranspose, the deprecated Upsample, DepthToSpace/SpaceToDepth, and
the indexing and reduction ops that dynamic exports use. They register into the same `OPS`
table as `harden.runtime.torch_ops`; each is tested against ONNX Runtime, values and input
gradient (tests/test_torch_ops_coverage.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harden.runtime.op_table import NodeInputs, register
from harden.runtime.torch_ops import Attributes, Op, Value, _ints, _reduce, _t, op

# -- activations --------------------------------------------------------------------------------

SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # ONNX's defaults


@op("LeakyRelu")
def _leaky_relu(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.leaky_relu(_t(x[0]), a.get("alpha", 0.01))


@op("PRelu")
def _prelu(x: list[Value], a: Attributes) -> torch.Tensor:
    data, slope = _t(x[0]), _t(x[1])
    return torch.where(data >= 0, data, data * slope)  # slope broadcasts to data, as ONNX says


@op("HardSigmoid")
def _hard_sigmoid(x: list[Value], a: Attributes) -> torch.Tensor:
    return (a.get("alpha", 0.2) * _t(x[0]) + a.get("beta", 0.5)).clamp(0, 1)


@op("HardSwish")
def _hard_swish(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.hardswish(_t(x[0]))


@op("Gelu")
def _gelu(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.gelu(_t(x[0]), approximate=a.get("approximate", "none"))


@op("Elu")
def _elu(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.elu(_t(x[0]), a.get("alpha", 1.0))


@op("Celu")
def _celu(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.celu(_t(x[0]), a.get("alpha", 1.0))


@op("Selu")
def _selu(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    alpha, gamma = a.get("alpha", SELU_ALPHA), a.get("gamma", SELU_GAMMA)
    return gamma * torch.where(data > 0, data, alpha * (torch.exp(data) - 1))


@op("Softplus")
def _softplus(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.softplus(_t(x[0]))


@op("Mish")
def _mish(x: list[Value], a: Attributes) -> torch.Tensor:
    return F.mish(_t(x[0]))


@op("ThresholdedRelu")
def _thresholded_relu(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    return torch.where(data > a.get("alpha", 1.0), data, torch.zeros_like(data))


def _refuse_training_dropout(a: Attributes, x: NodeInputs) -> str | None:
    """Dropout is the identity only in inference; a training_mode the graph computes (or sets) is refused."""
    if not x.named(2):
        return None
    mode = x.constant(2)
    if mode is None:
        return "input training_mode is not a constant of the graph (the twin computes inference only)"
    ratio = x.constant(1)
    if bool(mode) and not (ratio is not None and float(ratio) == 0.0):
        return "input training_mode is true (random dropout): the twin computes inference only"
    return None


@op("Dropout", outputs=2, refuse=_refuse_training_dropout)
def _dropout(x: list[Value], a: Attributes) -> tuple[torch.Tensor, torch.Tensor]:
    data = _t(x[0])  # inference (or a ratio of 0): the identity, nothing masked
    return data, torch.ones_like(data, dtype=torch.bool)


def _elementwise(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda x, a: fn(_t(x[0]))


ELEMENTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Sign": torch.sign,
    "Round": torch.round,  # half to even, as ONNX
    "IsNaN": torch.isnan,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
}
for _name, _fn in ELEMENTWISE.items():
    register("", _name, _elementwise(_fn))
register("", "Xor", lambda x, a: torch.logical_xor(_t(x[0]), _t(x[1])))

# -- normalisation ------------------------------------------------------------------------------


@op("InstanceNormalization")
def _instance_norm(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    return F.instance_norm(data, weight=_t(x[1]), bias=_t(x[2]), eps=a.get("epsilon", 1e-5))


@op("GroupNormalization")
def _group_norm(x: list[Value], a: Attributes) -> torch.Tensor:
    data, scale, bias = _t(x[0]), _t(x[1]), _t(x[2])
    groups, channels = int(a["num_groups"]), data.shape[1]
    if scale.numel() != channels:  # opset 18 stored one scale per group; opset 21 one per channel
        scale, bias = scale.repeat_interleave(channels // groups), bias.repeat_interleave(channels // groups)
    compute = torch.float32 if a.get("stash_type", 1) == 1 else data.dtype
    out = F.group_norm(data.to(compute), groups, scale.to(compute), bias.to(compute), a.get("epsilon", 1e-5))
    return out.to(data.dtype)


# -- layers -------------------------------------------------------------------------------------


@op("DepthToSpace")
def _depth_to_space(x: list[Value], a: Attributes) -> torch.Tensor:
    data, size = _t(x[0]), int(a["blocksize"])
    if a.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(data, size)
    b, c, h, w = data.shape
    out = data.reshape(b, size, size, c // size**2, h, w).permute(0, 3, 4, 1, 5, 2)
    return out.reshape(b, c // size**2, h * size, w * size)


@op("IsInf")
def _is_inf(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    positive = torch.isposinf(data) if a.get("detect_positive", 1) else torch.zeros_like(data, dtype=torch.bool)
    return positive | torch.isneginf(data) if a.get("detect_negative", 1) else positive


@op("SpaceToDepth")
def _space_to_depth(x: list[Value], a: Attributes) -> torch.Tensor:
    """DCR order (the only one before opset 28): channel = (row offset · blocksize + column offset) · C + c;
    CRD (opset 28): channel = c · blocksize² + row offset · blocksize + column offset."""
    data, size = _t(x[0]), int(a["blocksize"])
    b, c, h, w = data.shape
    blocks = data.reshape(b, c, h // size, size, w // size, size)
    out = blocks.permute(0, 1, 3, 5, 2, 4) if a.get("mode", "DCR") == "CRD" else blocks.permute(0, 3, 5, 1, 2, 4)
    return out.reshape(b, c * size * size, h // size, w // size)


@op("Einsum")
def _einsum(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.einsum(a["equation"], *[_t(v) for v in x])


# -- indexing -----------------------------------------------------------------------------------


def _arg(fn: str) -> Op:
    def run(x: list[Value], a: Attributes) -> torch.Tensor:
        data = _t(x[0])
        axis, keep = a.get("axis", 0) % data.dim(), bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            flipped = getattr(data.flip(axis), fn)(dim=axis, keepdim=keep)
            return data.shape[axis] - 1 - flipped
        return getattr(data, fn)(dim=axis, keepdim=keep)

    return run


register("", "ArgMax", _arg("argmax"))
register("", "ArgMin", _arg("argmin"))


@op("TopK", outputs=2)
def _top_k(x: list[Value], a: Attributes) -> tuple[torch.Tensor, torch.Tensor]:
    data = _t(x[0])
    k = _ints(x[1])[0] if len(x) > 1 else int(a["k"])  # an attribute before opset 10
    axis, largest = a.get("axis", -1), bool(a.get("largest", 1))
    # ONNX: among equal values the lower index comes first; a stable sort keeps that order
    order = torch.sort(data, dim=axis, descending=largest, stable=True).indices.narrow(axis % data.dim(), 0, k)
    return data.gather(axis, order), order


REDUCTIONS = {"none": "", "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _refuse_reduction(a: Attributes, x: NodeInputs) -> str | None:
    reduction = a.get("reduction", "none")
    return None if reduction in REDUCTIONS else f"attribute reduction={reduction} is not an ONNX reduction"


@op("ScatterND", refuse=_refuse_reduction)
def _scatter_nd(x: list[Value], a: Attributes) -> torch.Tensor:
    data, indices, updates = _t(x[0]), _t(x[1]).long(), _t(x[2])
    reduction = a.get("reduction", "none")
    if reduction == "none":
        return data.index_put(tuple(indices.unbind(-1)), updates)
    depth = indices.shape[-1]  # flatten the indexed axes into one, then scatter-reduce rows along it
    rows = data.reshape(-1, *data.shape[depth:])
    strides = torch.tensor([math.prod(data.shape[i + 1 : depth]) for i in range(depth)], dtype=torch.long)
    flat = (torch.where(indices < 0, indices + torch.tensor(data.shape[:depth]), indices) * strides).sum(-1)
    flat_updates = updates.reshape(-1, *data.shape[depth:])
    index = flat.reshape(-1, *([1] * (rows.dim() - 1))).expand_as(flat_updates)
    return rows.scatter_reduce(0, index, flat_updates, REDUCTIONS[reduction], include_self=True).reshape(data.shape)


@op("GatherElements")
def _gather_elements(x: list[Value], a: Attributes) -> torch.Tensor:
    data, indices = _t(x[0]), _t(x[1]).long()
    axis = a.get("axis", 0) % data.dim()
    return data.gather(axis, torch.where(indices < 0, indices + data.shape[axis], indices))


@op("CumSum")
def _cumsum(x: list[Value], a: Attributes) -> torch.Tensor:
    data, axis = _t(x[0]), _ints(x[1])[0]
    if a.get("reverse", 0):
        data = data.flip(axis)
    out = data.cumsum(axis)
    if a.get("exclusive", 0):
        out = out - data
    return out.flip(axis) if a.get("reverse", 0) else out


@op("Mean")
def _mean(x: list[Value], a: Attributes) -> torch.Tensor:
    total = _t(x[0])
    for value in x[1:]:
        total = total + _t(value)
    return total / len(x)


@op("Trilu")
def _trilu(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    k = _ints(x[1])[0] if len(x) > 1 and x[1] is not None else 0
    return data.triu(k) if a.get("upper", 1) else data.tril(k)


# -- reductions ---------------------------------------------------------------------------------

register("", "ReduceProd", _reduce(lambda t, d, k: _prod(t, d, k), 1.0))
register("", "ReduceLogSumExp", _reduce(lambda t, d, k: t.logsumexp(dim=d, keepdim=k), -math.inf))
register("", "ReduceLogSum", _reduce(lambda t, d, k: t.sum(dim=d, keepdim=k).log(), -math.inf))
register("", "ReduceL1", _reduce(lambda t, d, k: t.abs().sum(dim=d, keepdim=k)))
register("", "ReduceSumSquare", _reduce(lambda t, d, k: t.square().sum(dim=d, keepdim=k)))


def _prod(data: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for dim in sorted(dims, reverse=True):
        data = data.prod(dim=dim, keepdim=keep)
    return data
