"""Parity after every export: does the ONNX file compute what the PyTorch model computes?

The ONNX side runs the file as written (ONNX Runtime with graph optimisations off): parity
judges the file, on any CPU. Whether this machine's fused int8 kernels compute the same is a
separate question (`harden.export.arithmetic`).

Polygraphy's Comparator runs both sides on the same feeds — ONNX Runtime through its own
runner, PyTorch through `TorchRunner` (Polygraphy's PyTorch runner hard-codes CUDA, docs/design.md
§4) — and compares the logits elementwise with the precision's tolerances. On top of that we
measure what a segmentation engineer cares about: the fraction of pixels whose predicted class
agrees, and the mIoU of each side against the labels. A model with RAD is compared on the
fixed-seed path: image i is fed `rad_seed = i` on both sides, so the masks must coincide.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER
from torch import nn

from harden.export.onnx_export import IMAGE, LOGITS, RAD_SEED
from harden.export.ort_session import ort_session
from harden.export.tolerances import TOLERANCES, Tolerance
from harden.metrics import ConfusionMatrix
from harden.ram import fixed_rad_seed


class TorchRunner(BaseRunner):
    """A Polygraphy runner over a PyTorch segmentation model on CPU (feeds `rad_seed` to RAD)."""

    def __init__(self, model: nn.Module, with_rad: bool, name: str = "pytorch") -> None:
        super().__init__(name=name, prefix="pytorch-runner")
        self.model = model
        self.with_rad = with_rad

    def activate_impl(self) -> None:
        self.model.eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        metadata = TensorMetadata().add(IMAGE, np.float32, (None, 3, None, None))
        if self.with_rad:
            metadata.add(RAD_SEED, np.int64, ())
        return metadata

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        image = torch.from_numpy(feed_dict[IMAGE])
        start = time.perf_counter()
        with torch.no_grad():
            if self.with_rad:
                with fixed_rad_seed(self.model, int(feed_dict[RAD_SEED])):
                    logits = self.model(image)
            else:
                logits = self.model(image)
        self.inference_time = time.perf_counter() - start
        return OrderedDict([(LOGITS, logits.numpy())])

    def deactivate_impl(self) -> None:
        pass


@dataclass(frozen=True)
class ParityReport:
    precision: str
    images: int
    max_abs_diff: float
    max_rel_diff: float  # relative to max(|PyTorch logit|, 1)
    argmax_agreement: float
    miou_reference: float
    miou_onnx: float
    miou_change: float
    elementwise_within_tolerance: bool  # Polygraphy's comparison with the precision's atol/rtol
    tolerance: Tolerance
    rad_seeds: list[int] | None
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    precision: str = "fp32",
    with_rad: bool = False,
) -> ParityReport:
    """Compare `model` (PyTorch, CPU) with `onnx_path` (ONNX Runtime, CPU) on `images`.

    Args:
        images: (B, 3, H, W) in [0, 1]; each image is one Polygraphy iteration.
        labels: (B, H, W) for the mIoU of each side.
        precision: picks the `TOLERANCES` entry.
        with_rad: feed `rad_seed` = image index to both sides.
    """
    tolerance = TOLERANCES[precision]
    feeds: list[dict[str, np.ndarray]] = []
    for i in range(images.shape[0]):
        feed = {IMAGE: images[i : i + 1].numpy().astype(np.float32)}
        if with_rad:
            feed[RAD_SEED] = np.array(i, dtype=np.int64)
        feeds.append(feed)
    # The file's own arithmetic (Q/DQ as written), so the verdict does not depend on this CPU's int8
    # kernels; those are judged apart by the engine-arithmetic audit (harden.export.arithmetic).
    session = ort_session(onnx_path, as_written=True)
    onnx_runner = OnnxrtRunner(session, name="onnxruntime")
    compare = SimpleCompareFunc(atol=tolerance.atol, rtol=tolerance.rtol)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # Polygraphy logs every iteration at INFO
        results = Comparator.run([TorchRunner(model, with_rad), onnx_runner], data_loader=feeds)
        elementwise_ok = bool(Comparator.compare_accuracy(results, compare_func=compare))

    reference = np.concatenate([r[LOGITS] for r in results[0][1]]).astype(np.float64)
    deployed = np.concatenate([r[LOGITS] for r in results[1][1]]).astype(np.float64)
    if not np.isfinite(deployed).all():
        deployed = np.nan_to_num(deployed, nan=np.inf)  # counts as a maximal difference below
    difference = np.abs(deployed - reference)
    reference_pred, deployed_pred = reference.argmax(1), deployed.argmax(1)
    miou_reference, miou_onnx = (_miou(pred, labels, num_classes) for pred in (reference_pred, deployed_pred))
    report = dict(
        max_abs_diff=float(difference.max()),
        max_rel_diff=float((difference / np.maximum(np.abs(reference), 1.0)).max()),
        argmax_agreement=float((reference_pred == deployed_pred).mean()),
        miou_reference=miou_reference,
        miou_onnx=miou_onnx,
        miou_change=abs(miou_onnx - miou_reference),
    )
    reasons = []
    if not elementwise_ok:
        reasons.append(f"logits differ beyond atol={tolerance.atol:g}, rtol={tolerance.rtol:g}")
    if report["argmax_agreement"] < tolerance.min_agreement:
        reasons.append(f"argmax agreement {report['argmax_agreement']:.4%} < {tolerance.min_agreement:.2%}")
    if report["miou_change"] > tolerance.max_miou_change:
        reasons.append(f"mIoU changed by {report['miou_change']:.4f} > {tolerance.max_miou_change:g}")
    return ParityReport(
        precision=precision,
        images=images.shape[0],
        elementwise_within_tolerance=elementwise_ok,
        tolerance=tolerance,
        rad_seeds=list(range(images.shape[0])) if with_rad else None,
        passed=not reasons,
        reasons=reasons,
        **report,
    )


def _miou(pred: np.ndarray, labels: torch.Tensor, num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    matrix.update(torch.from_numpy(pred), labels)
    return matrix.miou()
