"""ONNX operators written with torch operations, for the graph twin (docs/design.md §5).

Each entry of `OPS` takes the node's inputs (tensors, or None for an omitted optional input)
and its attributes, and returns the node's outputs. Semantics follow opset 18, the opset the
exporter writes. Everything is differentiable where the ONNX op is, so attacks get gradients
through the deployed graph.

Precision emulation (the precision twin):
- `Cast` to float16 really computes in float16 from there on, as the fp16 variant does;
- `QuantizeLinear` returns the integer grid values as a float tensor, rounded half to even like
  ONNX, with a straight-through gradient inside the representable range (zero outside, where
  the value saturates) — the usual fake quantisation — and `DequantizeLinear` maps them back
  with the scales and zero points stored in the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harden.ram import ops as _ops  # noqa: F401  (registers torch.ops.harden.*)
from harden.runtime.op_table import (  # noqa: F401
    OPS,
    WANTED_OUTPUTS,
    Attributes,
    NodeInputs,
    Op,
    Value,
    _ints,
    _t,
    op,
    optional,
    register,
)

# onnx.TensorProto data types → torch dtypes
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}
QUANT_RANGE = {
    torch.int8: (-128, 127),
    torch.uint8: (0, 255),
    torch.int16: (-32768, 32767),
    torch.int32: (-(2**31), 2**31 - 1),
}

# -- elementwise --------------------------------------------------------------------------------


@op("Add")
def _add(x: list[Value], a: Attributes) -> torch.Tensor:
    return _t(x[0]) + _t(x[1])


@op("Sub")
def _sub(x: list[Value], a: Attributes) -> torch.Tensor:
    return _t(x[0]) - _t(x[1])


@op("Mul")
def _mul(x: list[Value], a: Attributes) -> torch.Tensor:
    return _t(x[0]) * _t(x[1])


@op("Div")
def _div(x: list[Value], a: Attributes) -> torch.Tensor:
    left, right = _t(x[0]), _t(x[1])
    if not left.is_floating_point():  # ONNX integer division truncates
        return torch.div(left, right, rounding_mode="trunc")
    return left / right


@op("Pow")
def _pow(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.pow(_t(x[0]), _t(x[1]).to(_t(x[0]).dtype))


@op("Mod")
def _mod(x: list[Value], a: Attributes) -> torch.Tensor:
    left, right = _t(x[0]), _t(x[1])
    return torch.fmod(left, right) if a.get("fmod", 0) else torch.remainder(left, right)


UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Softsign": F.softsign,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Not": torch.logical_not,
    "Identity": lambda t: t,
}


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda x, a: fn(_t(x[0]))


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    return lambda x, a: fn(_t(x[0]), _t(x[1]))


for _name, _fn in UNARY.items():
    register("", _name, _unary(_fn))

COMPARE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "BitwiseAnd": torch.bitwise_and,
}
for _name, _cmp in COMPARE.items():
    register("", _name, _binary(_cmp))


def _fold(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    def run(x: list[Value], a: Attributes) -> torch.Tensor:
        result = _t(x[0])
        for value in x[1:]:
            result = fn(result, _t(value))
        return result

    return run


register("", "Max", _fold(torch.maximum))
register("", "Min", _fold(torch.minimum))
register("", "Sum", _fold(torch.add))


@op("Where")
def _where(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.where(_t(x[0]), _t(x[1]), _t(x[2]))


@op("Clip", since=11)
def _clip(x: list[Value], a: Attributes) -> torch.Tensor:
    low, high = optional(x, 1), optional(x, 2)
    if low is None and high is None:
        return _t(x[0])
    return torch.clamp(_t(x[0]), min=low, max=high)


@op("Clip", until=10)
def _clip_6(x: list[Value], a: Attributes) -> torch.Tensor:  # bounds were attributes before opset 11
    return torch.clamp(_t(x[0]), min=a.get("min", -3.4028234663852886e38), max=a.get("max", 3.4028234663852886e38))


def along_axis(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> tuple[Op, Op]:
    """(opset 13+, opsets 1–12) forms of Softmax-like ops: from opset 13 along one axis; before,
    on the input coerced to 2-D at `axis` (the axis and all after it form one row)."""

    def per_axis(x: list[Value], a: Attributes) -> torch.Tensor:
        return fn(_t(x[0]), a.get("axis", -1))

    def coerced(x: list[Value], a: Attributes) -> torch.Tensor:
        data = _t(x[0])
        axis = a.get("axis", 1) % max(data.dim(), 1)
        return fn(data.reshape(math.prod(data.shape[:axis]), -1), 1).reshape(data.shape)

    return per_axis, coerced


def _hardmax(data: torch.Tensor, axis: int) -> torch.Tensor:
    first = data.argmax(dim=axis, keepdim=True)  # the first maximum, as ONNX
    return torch.zeros_like(data).scatter(axis, first, 1.0)


AXIS_OPS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "Softmax": lambda t, axis: torch.softmax(t, axis),
    "LogSoftmax": lambda t, axis: torch.log_softmax(t, axis),
    "Hardmax": _hardmax,
}
for _axis_name, _axis_fn in AXIS_OPS.items():
    _new, _old = along_axis(_axis_fn)
    register("", _axis_name, _new, since=13)
    register("", _axis_name, _old, until=12)


@op("Cast")
def _cast(x: list[Value], a: Attributes) -> torch.Tensor:
    return _t(x[0]).to(DTYPES[a["to"]])


@op("CastLike")
def _cast_like(x: list[Value], a: Attributes) -> torch.Tensor:
    return _t(x[0]).to(_t(x[1]).dtype)


# -- linear algebra and neural-network layers --------------------------------------------------


@op("MatMul")
def _matmul(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.matmul(_t(x[0]), _t(x[1]))


@op("Gemm")
def _gemm(x: list[Value], a: Attributes) -> torch.Tensor:
    left = _t(x[0]).T if a.get("transA", 0) else _t(x[0])
    right = _t(x[1]).T if a.get("transB", 0) else _t(x[1])
    out = a.get("alpha", 1.0) * (left @ right)
    return out + a.get("beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else out


@op("LayerNormalization", since=17, outputs=3)
def _layer_norm(x: list[Value], a: Attributes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, and the optional Mean and InvStdDev over the normalised axes (in the compute type)."""
    data = _t(x[0])
    axis = a.get("axis", -1) % data.dim()
    compute = (
        torch.float32 if a.get("stash_type", 1) == 1 and data.dtype in (torch.float16, torch.bfloat16) else data.dtype
    )
    value, epsilon = data.to(compute), a.get("epsilon", 1e-5)
    scale, bias = _t(x[1]).to(compute), optional(x, 2)
    shape = data.shape[axis:]
    out = F.layer_norm(
        value, shape, scale.expand(shape), bias.to(compute).expand(shape) if bias is not None else None, epsilon
    )
    if a.get(WANTED_OUTPUTS, 1) == 1:  # the usual node: Mean and InvStdDev are not read
        empty = torch.empty(0, dtype=compute)
        return out.to(data.dtype), empty, empty
    variance, mean = torch.var_mean(value, dim=tuple(range(axis, data.dim())), unbiased=False, keepdim=True)
    return out.to(data.dtype), mean, torch.rsqrt(variance + epsilon)


def _refuse_training(a: Attributes, x: NodeInputs) -> str | None:
    if a.get("training_mode", 0):
        return "attribute training_mode=1 (batch statistics): the twin computes inference"
    return None


@op("BatchNormalization", refuse=_refuse_training)
def _batch_norm(x: list[Value], a: Attributes) -> torch.Tensor:
    data, scale, bias, mean, var = (_t(v) for v in x[:5])
    return F.batch_norm(data, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


# -- reductions ---------------------------------------------------------------------------------


def _reduce(fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor], empty: float = 0.0) -> Op:
    """A Reduce* op; `empty` is its value over an empty set (ONNX: the reduction's identity)."""

    def run(x: list[Value], a: Attributes) -> torch.Tensor:
        data = _t(x[0])
        axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes", [])
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return data
            axes = list(range(data.dim()))
        dims, keep = [ax % data.dim() for ax in axes], bool(a.get("keepdims", 1))
        if any(data.shape[d] == 0 for d in dims):
            shape = [1 if d in dims else n for d, n in enumerate(data.shape) if keep or d not in dims]
            return torch.full(shape, _identity(empty, data.dtype), dtype=data.dtype, device=data.device)
        return fn(data, dims, keep)

    return run


def _identity(value: float, dtype: torch.dtype) -> float | int | bool:
    if dtype == torch.bool:
        return value > 0
    if dtype.is_floating_point or math.isfinite(value):
        return value
    info = torch.iinfo(dtype)
    return info.max if value > 0 else info.min


register("", "ReduceMean", _reduce(lambda t, d, k: t.mean(dim=d, keepdim=k), math.nan))
register("", "ReduceSum", _reduce(lambda t, d, k: t.sum(dim=d, keepdim=k)))
register("", "ReduceMax", _reduce(lambda t, d, k: t.amax(dim=d, keepdim=k), -math.inf))
register("", "ReduceMin", _reduce(lambda t, d, k: t.amin(dim=d, keepdim=k), math.inf))
register("", "ReduceL2", _reduce(lambda t, d, k: t.square().sum(dim=d, keepdim=k).sqrt()))
