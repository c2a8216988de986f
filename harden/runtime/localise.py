"""Where does the engine start to compute something else? The first diverging node.

When the engine and its graph twin disagree beyond a parity gate, both run the same graph, so
their intermediate tensors can be compared node by node (Polygraphy's "mark all outputs"
debugging): every node output is exposed as an output of a copy of the file, ONNX Runtime runs
that copy at the deployment's optimisation level, the twin computes the same values, and the
first node in topological order whose float output differs beyond tolerance is named. Exposing
an output can keep ONNX Runtime from fusing across it, so a divergence that exists only inside a
fused kernel shows at the fused group's first exposed output. That turns "FAIL" into a bug
report: node name, op type, max |Δ|.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import torch

from harden.attacks.evaluate import DRAW_SEED
from harden.data import SegmentationDataset, collate_pad
from harden.export.files import load_onnx
from harden.export.ort_session import ort_session
from harden.ram import fixed_rad_seed
from harden.runtime.gates import GateResult
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.verify_result import VerifyResult

PARITY_GATES: Final = ("clean-agreement[graph]", "clean-miou-delta[graph]", "adversarial-agreement[graph]")

# |Δ| ≤ atol + rtol · max|twin value| per node output; int8 allows a few quantisation levels.
TOLERANCE: Final = {"fp32": (1e-5, 1e-4), "fp16": (1e-3, 1e-2), "int8": (1e-3, 5e-2)}


@dataclass(frozen=True)
class FirstDivergence:
    node: str
    op_type: str
    output: str
    max_abs: float
    tolerance: float
    nodes_compared: int

    def detail(self) -> str:
        return (
            f"first diverging node: {self.node} ({self.op_type}, output {self.output}): max |Δ| {self.max_abs:.3g} "
            f"> tolerance {self.tolerance:.3g}, after {self.nodes_compared - 1} nodes that agree"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detail": self.detail()}


def first_divergence(
    path: Path, twin: GraphTwin, images: torch.Tensor, seed: int, precision: str, device: str = "cpu"
) -> FirstDivergence | None:
    """Compare every float node output of the engine (ONNX Runtime over `path`, all outputs
    exposed) with `twin`'s on `images` and rad_seed `seed`; None when every node agrees."""
    model = load_onnx(path)
    exposed = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in exposed:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                exposed.add(name)
    with tempfile.TemporaryDirectory(prefix="harden-localise-") as scratch:
        marked = Path(scratch) / path.name
        onnx.save_model(model, str(marked))
        session = ort_session(marked, device=device)
        feed = twin.interface.feed(images, seed)
        names = [o.name for o in session.get_outputs()]
        engine = dict(zip(names, session.run(names, feed), strict=True))
    with torch.no_grad(), fixed_rad_seed(twin, seed):
        values = twin.intermediates(images.to(next(twin.buffers(), images).device))
    atol, rtol = TOLERANCE.get(precision, TOLERANCE["int8"])
    compared = 0
    for name_of_node, (_, op_type, _, outputs, _) in zip(twin.node_names, twin.nodes, strict=True):
        for output in outputs:
            mine, theirs = values.get(output), engine.get(output)
            if mine is None or theirs is None or not mine.is_floating_point() or mine.shape != theirs.shape:
                continue
            compared += 1
            reference = mine.detach().double().cpu().numpy()
            delta = float(np.nan_to_num(np.abs(theirs.astype(np.float64) - reference), nan=np.inf).max(initial=0))
            tolerance = atol + rtol * float(np.abs(reference).max(initial=0))
            if delta > tolerance:
                return FirstDivergence(name_of_node, op_type, output, delta, tolerance, compared)
    return None


def localise_failed_parity(
    result: VerifyResult, gates: list[GateResult], twin: GraphTwin | None, dataset: SegmentationDataset, device: str
) -> list[GateResult]:
    """When a parity gate between the engine and the graph twin failed, find the first diverging
    node on the first clean images, store it in `result.localisation` and name it in the failed
    gates' details (returned). An engine that cannot expose its intermediates (TensorRT) or a
    run without a graph twin is left as it is."""
    failed = [g for g in gates if g.name in PARITY_GATES and _leans_to_fail(g)]
    if not failed or twin is None or result.deployment.artefact.suffix != ".onnx":
        return gates
    images, _ = collate_pad([dataset[i] for i in range(min(2, len(dataset)))])
    found = first_divergence(result.deployment.artefact, twin, images, DRAW_SEED, result.deployment.precision, device)
    if found is None:
        detail = (
            "no node output differs beyond tolerance on the first clean images: the disagreement arises on other "
            "inputs (adversarial ones sit near decision boundaries)"
        )
        result.localisation = {"node": None, "op_type": None, "output": None, "max_abs": None, "tolerance": None,
                               "detail": detail}  # fmt: skip
    else:
        result.localisation = found.to_dict()
        detail = found.detail()
    return [dataclasses.replace(g, detail=f"{g.detail}; {detail}") if g in failed else g for g in gates]


def _leans_to_fail(gate: GateResult) -> bool:
    """A parity gate that failed, or that could not decide with its estimate on the failing side
    (too few images to fail it): worth naming where the engine diverges."""
    if gate.outcome == "fail":
        return True
    if gate.outcome == "pass" or gate.interval is None or gate.threshold is None:
        return False
    at_most = "miou-delta" in gate.name  # |ΔmIoU| ≤ threshold; the agreements are ≥ threshold
    return gate.interval.point > gate.threshold if at_most else gate.interval.point < gate.threshold
