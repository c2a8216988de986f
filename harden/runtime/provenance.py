"""Precision provenance: is the deployed file's quantisation the one its export produced?

Outcome gates (agreement with the source) cannot see a precision fault that costs a point of
accuracy: a faithful int8 file agrees 98.4 % with its source and one whose activation scales
were multiplied by four still agrees 97.6 % (issue 27). So the precision itself is judged:
- `int8_provenance`: the export recorded its calibration recipe (data, split, images, seed,
  size, weight range) in the manifest; verify calibrates the hash-checked fp32 file again with
  that recipe and compares every QuantizeLinear / DequantizeLinear scale and zero point with
  the deployed file's, naming the first node that differs. Re-deriving instead of trusting a
  recorded list means a tool that rewrote the file and re-signed the manifest is still caught.
- `float32_attention`: the ops the export keeps in float32 (MAS, RAD, softmax: their bound and
  sums need it, `harden.export.precision`) must still receive float32 in the deployed graph.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from harden.attacks.checks import Check
from harden.errors import InputError
from harden.export.pipeline import calibration_images
from harden.export.precision import FP32_OPS, to_int8
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.twins import Deployment

SCALE_RTOL = 1e-4  # re-calibration on another CPU may differ in the last float bits, nothing more


def quantisation_parameters(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Node name → (scale, zero point) of every QuantizeLinear and DequantizeLinear, in graph order."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = constants.get(node.input[1]) if len(node.input) > 1 else None
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is not None:
            found[node.name or f"{node.op_type}_{i}"] = (scale, zero)
    return found


def int8_provenance(deployment: Deployment) -> Check:
    """Calibrate model.fp32.onnx again with the recorded recipe; every Q/DQ parameter must match."""
    if deployment.precision != "int8":
        return Check("int8-provenance", "n/a", "the deployed file is not int8")
    if not deployment.signed:
        return Check("int8-provenance", "n/a", "unsigned: no manifest records the calibration recipe to re-derive")
    record = deployment.manifest.record(deployment.onnx.name) if deployment.manifest else None
    recipe = record.calibration if record is not None else None
    if recipe is None:
        return Check(
            "int8-provenance",
            "fail",
            f"{deployment.onnx.name} is int8 but the manifest records no calibration recipe to re-derive its "
            "scales from: its quantisation cannot be checked (export it again with this harden)",
        )
    try:
        images = calibration_images(recipe)
    except InputError as err:
        return Check("int8-provenance", "fail", f"cannot re-derive the int8 calibration: {err}")
    with tempfile.TemporaryDirectory(prefix="harden-provenance-") as scratch:
        again = Path(scratch) / "int8.onnx"
        to_int8(deployment.reference_onnx, again, iter(images), recipe.rad, recipe.weights)
        expected = quantisation_parameters(onnx.load(str(again)))
    deployed = quantisation_parameters(onnx.load(str(deployment.onnx), load_external_data=False))
    if list(expected) != list(deployed):
        missing = [n for n in expected if n not in deployed][:3]
        extra = [n for n in deployed if n not in expected][:3]
        return Check(
            "int8-provenance",
            "fail",
            f"the deployed Q/DQ nodes are not the export's ({len(deployed)} vs {len(expected)} re-derived; "
            f"missing {missing}, unexpected {extra}): the quantised graph was changed after export",
        )
    for name, (scale, zero) in expected.items():
        got_scale, got_zero = deployed[name]
        if got_scale.shape != scale.shape or not np.allclose(got_scale, scale, rtol=SCALE_RTOL, atol=0):
            ratio = float(np.max(got_scale / np.where(scale == 0, 1, scale))) if got_scale.shape == scale.shape else 0.0
            return Check(
                "int8-provenance",
                "fail",
                f"node {name}: scale {_show(got_scale)} where the recorded recipe re-derives {_show(scale)} "
                f"(up to ×{ratio:.3g}): the int8 scales were changed after calibration",
            )
        if (zero is None) != (got_zero is None) or (
            zero is not None and got_zero is not None and not np.array_equal(zero, got_zero)
        ):
            return Check(
                "int8-provenance",
                "fail",
                f"node {name}: zero point {_show(got_zero)} where the recipe re-derives {_show(zero)}",
            )
    return Check(
        "int8-provenance",
        "pass",
        f"all {len(expected)} Q/DQ scales and zero points equal a re-calibration with the recorded recipe "
        f"({recipe.images} {recipe.data} images, seed {recipe.seed})",
    )


def float32_attention(deployed: GraphTwin, images: torch.Tensor, signed: bool = True) -> Check:
    """MAS, RAD and softmax must receive float32 tensors in the deployed graph (harden's export
    keeps them there; for an unsigned file nothing says what was intended: n/a, saying what runs)."""
    lowered: list[str] = []

    def observe(op_type: str, inputs: list[torch.Tensor | None], outputs: list[torch.Tensor], attrs: Any) -> None:
        if op_type in FP32_OPS and inputs and inputs[0] is not None and inputs[0].dtype != torch.float32:
            lowered.append(f"{op_type} on {inputs[0].dtype}")

    deployed.run_observed(images, observe)
    if not signed:
        found = f"{len(lowered)} run below float32 ({', '.join(sorted(set(lowered)))})" if lowered else "all float32"
        return Check(
            "float32-attention", "n/a", f"unsigned: no export records their precision; softmax/MAS/RAD: {found}"
        )
    if lowered:
        return Check(
            "float32-attention",
            "fail",
            f"{len(lowered)} MAS/RAD/softmax nodes run below float32 ({', '.join(sorted(set(lowered)))}): MAS's "
            "bound T and the softmax sums need float32; the precision conversion moved them",
        )
    return Check("float32-attention", "pass", "MAS, RAD and softmax run in float32, as exported")


def _show(array: np.ndarray | None) -> str:
    if array is None:
        return "none"
    flat = np.asarray(array).ravel()
    return f"{flat[0]:.4g}" if flat.size == 1 else f"[{flat[0]:.4g}, … {flat.size} values]"
