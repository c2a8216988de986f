"""The graph twin's quantisation ops (QuantizeLinear/DequantizeLinear as fake quantisation with a
straight-through gradient, `harden.runtime.torch_ops` describes the emulation) and harden's own
domain (MAS, MaskedMAS, RAD run by the training ops)."""

from __future__ import annotations

import numpy as np
import torch

from harden.runtime.op_table import Attributes, NodeInputs, Value, _t, op, optional
from harden.runtime.torch_ops import DTYPES, QUANT_RANGE

# -- quantisation (precision twin) --------------------------------------------------------------


def per_axis(param: torch.Tensor, data: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-tensor (0-d / 1-element) or per-axis (1-D) scale or zero point, broadcastable to data."""
    if param.numel() == 1:
        return param.reshape(())
    shape = [1] * data.dim()
    shape[axis % data.dim()] = param.numel()
    return param.reshape(shape)


def _round_ste(value: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX and torch.round) with the gradient of the identity."""
    return value + (torch.round(value) - value).detach()


def _blocked(param: torch.Tensor, data: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """A scale or zero point for `data`: per tensor, per axis, or (block_size, opset 21) per block."""
    if not block:
        return per_axis(param, data, axis)
    axis = axis % data.dim()
    return param.repeat_interleave(block, dim=axis).narrow(axis, 0, data.shape[axis])


def _refuse_quantize(a: Attributes, x: NodeInputs) -> str | None:
    zero = x.constant(2)
    dtype = zero.dtype if zero is not None else DTYPES.get(int(a.get("output_dtype", 0)) or 2)
    if x.named(2) and zero is None:
        return None  # a zero point computed in the graph: its type is checked when it runs
    if dtype not in QUANT_RANGE:
        return f"output type {dtype or a.get('output_dtype')} (the twin quantises to 8, 16 or 32-bit integers)"
    return None


@op("QuantizeLinear", refuse=_refuse_quantize)
def _quantize(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0]).float()
    axis, block = a.get("axis", 1), int(a.get("block_size", 0))
    scale = _blocked(_t(x[1]).float(), data, axis, block)
    zero = optional(x, 2)
    if zero is None:
        zero = torch.zeros((), dtype=DTYPES[int(a.get("output_dtype", 0)) or 2])
    low, high = QUANT_RANGE[zero.dtype]
    q = _round_ste(data / scale) + _blocked(zero.float(), data, axis, block)
    return q.clamp(low, high)  # clamp's gradient is zero where the value saturates


@op("DequantizeLinear")
def _dequantize(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0]).float()
    axis, block = a.get("axis", 1), int(a.get("block_size", 0))
    scale = _blocked(_t(x[1]).float(), data, axis, block)
    zero = optional(x, 2)
    return (data - (_blocked(zero.float(), data, axis, block) if zero is not None else 0.0)) * scale


# -- the harden domain (export/onnx_ops.py) -------------------------------------------------------


def float32_attribute(value: float) -> float:
    """The shortest decimal that a float32 attribute came from (0.30000001192… → 0.3): the value
    the training code used, so MAS gains and RAD thresholds match the source twin exactly."""
    return float(np.format_float_positional(np.float32(value), unique=True))


@op("Mas", domain="harden")
def _mas(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.ops.harden.mas(_t(x[0]), float32_attribute(a["threshold"]), None)


@op("MaskedMas", domain="harden")
def _masked_mas(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.ops.harden.mas(_t(x[0]), float32_attribute(a["threshold"]), _t(x[1]).bool())


@op("Rad", domain="harden")
def _rad(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.ops.harden.rad(_t(x[0]), _t(x[1]), int(a["counter"]), float32_attribute(a["p"]))
