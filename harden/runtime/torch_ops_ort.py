"""ONNX Runtime's own operators, for the graph twin of a file that went through its tools.

- contrib ops (domain com.microsoft) that ONNX Runtime's graph optimisers write into a re-saved
  file: FusedConv, FusedMatMul, Gelu/FastGelu/BiasGelu/QuickGelu, SkipLayerNormalization,
  LayerNormalization, BiasAdd;
- QOperator int8 (`quantize_static(..., QuantFormat.QOperator)`): QLinearConv, QLinearMatMul,
  QLinearAdd/Mul/Concat/LeakyRelu/Sigmoid/Softmax, QLinearAveragePool/GlobalAveragePool;
- dynamic quantisation (`quantize_dynamic`): DynamicQuantizeLinear, ConvInteger, MatMulInteger.

Quantised tensors are float tensors holding the integer grid values, as in `torch_ops`
(QuantizeLinear); their integer type is that of the zero point. Each quantised op computes what
ONNX Runtime's kernel computes — integer accumulation (exact in float64), one float32 multiplier
per output channel, rounding half to even, saturation — with straight-through gradients through
the rounding, so attacks see the quantised graph's arithmetic and still get gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harden.runtime.op_table import latest, register
from harden.runtime.torch_ops import QUANT_RANGE, Attributes, Value, _t, op
from harden.runtime.torch_ops_conv import _conv
from harden.runtime.torch_ops_quant import _round_ste, per_axis

MS = "com.microsoft"

# -- contrib ops of the graph optimisers --------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[torch.Tensor, list[float]], torch.Tensor]] = {
    "Relu": lambda t, p: torch.relu(t),
    "Tanh": lambda t, p: torch.tanh(t),
    "Sigmoid": lambda t, p: torch.sigmoid(t),
    "LeakyRelu": lambda t, p: F.leaky_relu(t, p[0] if p else 0.01),
    "Clip": lambda t, p: t.clamp(p[0], p[1]),
    "HardSigmoid": lambda t, p: (p[0] * t + p[1]).clamp(0, 1) if p else (0.2 * t + 0.5).clamp(0, 1),
}


@op("FusedConv", domain=MS)
def _fused_conv(x: list[Value], a: Attributes) -> torch.Tensor:
    conv_attrs = {k: v for k, v in a.items() if k not in ("activation", "activation_params")}
    out = _conv(x[:3], conv_attrs)
    assert isinstance(out, torch.Tensor)
    if len(x) > 3 and x[3] is not None:  # Z: a residual added before the activation
        out = out + x[3]
    activation = a.get("activation", "")
    if not activation:
        return out
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"FusedConv with activation {activation}")
    return ACTIVATIONS[activation](out, [float(p) for p in a.get("activation_params", [])])


@op("FusedMatMul", domain=MS)
def _fused_matmul(x: list[Value], a: Attributes) -> torch.Tensor:
    if a.get("transBatchA", 0) or a.get("transBatchB", 0):
        raise NotImplementedError("FusedMatMul with transBatchA/transBatchB")
    left, right = _t(x[0]), _t(x[1])
    left = left.transpose(-1, -2) if a.get("transA", 0) else left
    right = right.transpose(-1, -2) if a.get("transB", 0) else right
    return a.get("alpha", 1.0) * torch.matmul(left, right)


def _with_bias(x: list[Value]) -> torch.Tensor:
    data = _t(x[0])
    return data + x[1] if len(x) > 1 and x[1] is not None else data


register(MS, "Gelu", lambda x, a: F.gelu(_t(x[0])))
register(MS, "BiasGelu", lambda x, a: F.gelu(_with_bias(x)))
register(MS, "FastGelu", lambda x, a: F.gelu(_with_bias(x), approximate="tanh"))
register(MS, "QuickGelu", lambda x, a: _t(x[0]) * torch.sigmoid(a.get("alpha", 1.702) * _t(x[0])))
register(MS, "BiasAdd", lambda x, a: _t(x[0]) + _t(x[1]) + _t(x[2]))
register(MS, "LayerNormalization", latest("", "LayerNormalization"))


@op("SkipLayerNormalization", domain=MS, outputs=4)
def _skip_layer_norm(x: list[Value], a: Attributes) -> tuple[torch.Tensor, ...]:
    data, skip, gamma = _t(x[0]), _t(x[1]), _t(x[2])
    beta = x[3] if len(x) > 3 else None
    total = data + skip + x[4] if len(x) > 4 and x[4] is not None else data + skip
    eps = a.get("epsilon", 1e-12)
    mean = total.mean(-1, keepdim=True)
    inv_std = torch.rsqrt(total.var(-1, unbiased=False, keepdim=True) + eps)
    out = F.layer_norm(total, total.shape[-1:], gamma, beta, eps)
    return out, mean, inv_std, total  # output, mean, inv_std_var, input_skip_bias_sum


@op("SimplifiedLayerNormalization")
def _rms_norm(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    scale = torch.rsqrt(data.float().square().mean(-1, keepdim=True) + a.get("epsilon", 1e-5))
    return (data.float() * scale).to(data.dtype) * _t(x[1])


# -- QOperator int8 -----------------------------------------------------------------------------


def dequantized(q: Value, scale: Value, zero: Value, axis: int = 1) -> torch.Tensor:
    """Float value of grid values `q`: (q − zero) · scale, per tensor or per `axis`."""
    data = _t(q).double()
    zero_point = per_axis(zero.double(), data, axis) if zero is not None else 0.0
    return (data - zero_point) * per_axis(_t(scale).double(), data, axis)


def requantized(value: torch.Tensor, scale: Value, zero: Value) -> torch.Tensor:
    """Float `value` → grid values at (scale, zero): round half to even (straight-through), saturate."""
    zero_point = zero if zero is not None else torch.zeros((), dtype=torch.uint8)
    low, high = QUANT_RANGE[zero_point.dtype]
    q = _round_ste(value.float() / _t(scale).float()) + zero_point.float()
    return q.clamp(low, high)


def centred(q: Value, zero: Value, axis: int = 1) -> torch.Tensor:
    """q − zero in float64: integer values, exact under the accumulation of a conv or matmul."""
    data = _t(q).double()
    return data - per_axis(zero.double(), data, axis) if zero is not None else data


def _requantize_accumulator(acc: torch.Tensor, multiplier: torch.Tensor, zero: Value) -> torch.Tensor:
    """ONNX Runtime's requantisation: float32(int32 accumulator) · float32 multiplier, rounded."""
    zero_point = zero if zero is not None else torch.zeros((), dtype=torch.uint8)
    low, high = QUANT_RANGE[zero_point.dtype]
    return (_round_ste(acc.float() * multiplier) + zero_point.float()).clamp(low, high)


@op("QLinearConv")
def _qlinear_conv(x: list[Value], a: Attributes) -> torch.Tensor:
    data, x_scale, x_zero, weight, w_scale, w_zero, y_scale, y_zero = x[:8]
    bias = x[8].double() if len(x) > 8 and x[8] is not None else None
    acc = _conv([centred(data, x_zero), centred(weight, w_zero, 0), bias], a)
    assert isinstance(acc, torch.Tensor)
    multiplier = (_t(x_scale).float() * _t(w_scale).float() / _t(y_scale).float()).reshape(-1)
    shape = [1, -1] + [1] * (acc.dim() - 2)
    return _requantize_accumulator(acc, multiplier.reshape(shape) if multiplier.numel() > 1 else multiplier, y_zero)


@op("QLinearMatMul")
def _qlinear_matmul(x: list[Value], a: Attributes) -> torch.Tensor:
    left, a_scale, a_zero, right, b_scale, b_zero, y_scale, y_zero = x[:8]
    acc = torch.matmul(centred(left, a_zero, -1), centred(right, b_zero, -1))
    multiplier = (_t(a_scale).float() * _t(b_scale).float() / _t(y_scale).float()).reshape(-1)
    return _requantize_accumulator(acc, multiplier if multiplier.numel() > 1 else multiplier.reshape(()), y_zero)


def _binary_q(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(x: list[Value], a: Attributes) -> torch.Tensor:
        left = dequantized(x[0], x[1], x[2])
        right = dequantized(x[3], x[4], x[5])
        return requantized(fn(left, right), x[6], x[7])

    return run


register(MS, "QLinearAdd", _binary_q(torch.add))
register(MS, "QLinearMul", _binary_q(torch.mul))


def _unary_q(fn: Callable[[torch.Tensor, Attributes], torch.Tensor]) -> Callable[..., torch.Tensor]:
    # ONNX Runtime tabulates these 256 outputs with float maths and the same rounding
    def run(x: list[Value], a: Attributes) -> torch.Tensor:
        return requantized(fn(dequantized(x[0], x[1], x[2]).float(), a), x[3], x[4])

    return run


register(MS, "QLinearLeakyRelu", _unary_q(lambda t, a: F.leaky_relu(t, a.get("alpha", 0.01))))
register(MS, "QLinearSigmoid", _unary_q(lambda t, a: torch.sigmoid(t)))
register(MS, "QLinearSoftmax", _unary_q(lambda t, a: torch.softmax(t, dim=a.get("axis", -1))))
register(
    MS,
    "QLinearGlobalAveragePool",
    _unary_q(
        lambda t, a: (
            t.mean(dim=tuple(range(2, t.dim())), keepdim=True)
            if not a.get("channels_last", 0)
            else t.mean(dim=tuple(range(1, t.dim() - 1)), keepdim=True)
        )
    ),
)


@op("QLinearAveragePool", domain=MS)
def _qlinear_average_pool(x: list[Value], a: Attributes) -> torch.Tensor:
    if a.get("channels_last", 0):
        raise NotImplementedError("QLinearAveragePool with channels_last")
    pooled = latest("", "AveragePool")([dequantized(x[0], x[1], x[2]).float()], a)
    assert isinstance(pooled, torch.Tensor)
    return requantized(pooled, x[3], x[4])


@op("QLinearConcat", domain=MS)
def _qlinear_concat(x: list[Value], a: Attributes) -> torch.Tensor:
    y_scale, y_zero = x[0], x[1]
    parts = [dequantized(x[i], x[i + 1], x[i + 2]) for i in range(2, len(x), 3)]
    return requantized(torch.cat(parts, dim=a["axis"]), y_scale, y_zero)


# -- dynamic quantisation -----------------------------------------------------------------------


@op("DynamicQuantizeLinear", outputs=3)
def _dynamic_quantize(x: list[Value], a: Attributes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = _t(x[0]).float()
    low = torch.clamp(data.detach().min(), max=0.0)
    high = torch.clamp(data.detach().max(), min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, 255).to(torch.uint8)
    grid = (_round_ste(data / scale) + zero.float()).clamp(0, 255)
    return grid, scale, zero


@op("ConvInteger")
def _conv_integer(x: list[Value], a: Attributes) -> torch.Tensor:
    x_zero = x[2] if len(x) > 2 else None
    w_zero = x[3] if len(x) > 3 else None
    acc = _conv([centred(x[0], x_zero), centred(x[1], w_zero, 0)], a)
    assert isinstance(acc, torch.Tensor)
    return acc.float()  # int32 in the engine; integer-valued float32 here, so gradients pass


@op("MatMulInteger")
def _matmul_integer(x: list[Value], a: Attributes) -> torch.Tensor:
    a_zero = x[2] if len(x) > 2 else None
    b_zero = x[3] if len(x) > 3 else None
    return torch.matmul(centred(x[0], a_zero, -1), centred(x[1], b_zero, -1)).float()
