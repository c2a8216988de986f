"""ONNX Runtime sessions in two arithmetics: as deployed, and as the file is written.

ONNX Runtime rewrites a graph before running it. At `ORT_ENABLE_ALL` (its default, what a
deployment runs) it fuses QuantizeLinear/DequantizeLinear pairs around Conv and MatMul into
integer kernels whose arithmetic depends on the CPU: on x86-64 without VNNI, the u8s8 kernels
sum pairs of products in saturating int16 (docs/design.md §6b). At `ORT_DISABLE_ALL` every node runs
as the ONNX spec defines it — Q/DQ in float — so the result is the file's own semantics on any
CPU, to float rounding. Parity ("is the file the model?") uses the second; the engine-arithmetic
audit ("does this engine on this hardware compute the file?") compares the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harden import install_hint
from harden.errors import InputError


def ort_session(path: Path, *, as_written: bool = False, device: str = "cpu") -> Any:
    """An `onnxruntime.InferenceSession` over `path` (harden's custom-op schemas registered).

    Args:
        as_written: disable every graph optimisation (the file's semantics) instead of running
            the deployment's fused kernels.
        device: "cpu", or "cuda" / "cuda:N" for ONNX Runtime's CUDA provider on that GPU (needs
            onnxruntime-gpu).
    """
    import onnxruntime as ort

    from harden.export.onnx_ops import register_schemas

    register_schemas()
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(f"--device {device} needs onnxruntime-gpu: {install_hint('gpu')}")
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if as_written:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ORT raises its own exception types for unreadable models
        raise InputError(f"{path}: ONNX Runtime cannot load it ({err})") from err
