"""Precision variants made at the ONNX level (TensorRT 11 is strongly typed, docs/design.md §4).

fp16: ONNX Runtime's float16 converter, with inputs and outputs kept float32 (so every variant
takes the same feeds) and these ops kept in float32, Casts around them:
- harden::Mas / MaskedMas and Softmax: the softmax sums N exponentials per row (N up to a few
  thousand keys) and MAS's guarantee `max ≤ T` rests on the gain log((N−1)T/(1−T)) and on small
  weights that fp16's 11-bit mantissa flushes; exp in fp16 overflows above 11;
- harden::Rad: its mask is exact in any type, but keeping it next to MAS in fp32 saves a Cast
  pair per attention layer;
- the converter's own block list (ops without fp16 kernels in ONNX Runtime).

int8: static calibration on dataset images, written as explicit QuantizeLinear /
DequantizeLinear pairs on the inputs of Conv, MatMul and Gemm (the layers TensorRT runs in
int8), symmetric (zero point 0, which TensorRT requires), weights per output channel, min-max
ranges. Attention (MAS, softmax, RAD) stays float. Weights are "reduced" (7-bit, [−64, 64],
ONNX Runtime's `reduce_range`) or "full" (8-bit): ONNX Runtime's int8 kernels on x86-64 CPUs
without VNNI saturate with full-range weights and cannot with reduced ones
(`harden.export.arithmetic`); TensorRT and VNNI CPUs compute either exactly.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnx_ir
from onnx_ir.passes.common import TopologicalSortPass

from harden.errors import InputError
from harden.export.onnx_export import IMAGE, RAD_SEED, finish_model
from harden.export.onnx_ops import MAS, MASKED_MAS, RAD, register_schemas

PRECISIONS: Final = ("fp32", "fp16", "int8")
FP32_OPS: Final = (MAS, MASKED_MAS, RAD, "Softmax")
INT8_OPS: Final = ("Conv", "MatMul", "Gemm")
INT8_WEIGHTS: Final = ("reduced", "full")


def to_fp16(source: Path, target: Path) -> list[str]:
    """Write the fp16 variant of `source` to `target`; returns the op types kept in float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    register_schemas()
    model = onnx.load(str(source))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    # The converter appends its Casts at the end of the node list; the checker wants topological order.
    ir_model = onnx_ir.from_proto(converted)
    TopologicalSortPass()(ir_model)
    converted = onnx_ir.to_proto(ir_model)
    finish_model(converted)
    onnx.save_model(converted, str(target))
    used = {n.op_type for n in model.graph.node}
    return [op for op in blocked if op in used]


def to_int8(
    source: Path, target: Path, calibration: Iterator[np.ndarray], with_rad: bool, weights: str = "reduced"
) -> list[str]:
    """Write the int8 Q/DQ variant of `source` to `target`, calibrated on `calibration` images.

    Args:
        calibration: float32 images (1, 3, H, W) in [0, 1]; RAD models get seed i for image i.
        weights: "reduced" (7-bit weights in [−64, 64]: no int16 saturation on any x86-64 CPU)
            or "full" (8-bit: for TensorRT and VNNI CPUs).

    Returns the op types that received Q/DQ pairs.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if weights not in INT8_WEIGHTS:
        raise InputError(f"unknown int8 weight range {weights!r}; choose one of {', '.join(INT8_WEIGHTS)}")
    register_schemas()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(calibration, None)
            if image is None:
                return None
            feed = {IMAGE: image}
            if with_rad:
                feed[RAD_SEED] = np.array(self.index, dtype=np.int64)
            self.index += 1
            return feed

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantizer warns about pre-processing on every call
    try:
        with tempfile.TemporaryDirectory(prefix="harden-calib-") as scratch:
            # The quantizer writes its augmented model and calibration tables next to its inputs.
            quantize_static(
                str(source),
                str(Path(scratch) / "int8.onnx"),
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(INT8_OPS),
                per_channel=True,
                reduce_range=weights == "reduced",
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
            model = onnx.load(str(Path(scratch) / "int8.onnx"))
    finally:
        quiet.setLevel(level)
    finish_model(model)
    onnx.save_model(model, str(target))
    return sorted({n.op_type for n in model.graph.node if n.op_type in INT8_OPS})
