"""The deployment audits, the engine-arithmetic check and what the verdict cannot see, for verify."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from harden.attacks.checks import Check
from harden.attacks.evaluate import DRAW_SEED
from harden.data import SegmentationDataset, collate_pad
from harden.export.arithmetic import ArithmeticRecord, audit_file
from harden.ram import has_rad
from harden.runtime import audits, provenance, structure
from harden.runtime.engines import Engine, OnnxRuntimeEngine
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.twins import Deployment


def run_audits(
    deployment: Deployment,
    engine: Engine,
    twins: dict[str, nn.Module],
    deployed_twin: GraphTwin,
    reference: nn.Module,
    images: torch.Tensor,
) -> list[Check]:
    source = twins.get("source")
    if source is not None:
        weight_check = audits.weights(deployed_twin, audits.checkpoint_weights(source), "the checkpoint")
    elif isinstance(reference, GraphTwin) and reference is not deployed_twin:  # the fp32 export
        weight_check = audits.weights(deployed_twin, reference.constants(), "the fp32 reference")
    else:
        weight_check = Check(
            "weights", "n/a", "no source twin to compare the deployed weights with (pass --twin RUN_DIR)"
        )
    shape = structure.graph_structure(deployment, source)
    if source is None and not deployment.signed:
        unsigned = "unsigned: no manifest records "
        expectations = [
            Check("graph-ops", "n/a", unsigned + "which MAS/RAD nodes the graph must contain, and there is no source"),
            Check("rad-seed", "n/a", unsigned + "whether the model drops attention with RAD, and there is no source"),
        ]
    else:
        what = "the source model" if source is not None else "the export manifest"
        expected = audits.expected_harden_nodes(source, deployment.manifest)
        source_drops = has_rad(source) if source is not None else bool(expected["rad"])
        # a graph that is the source's fresh export node for node holds its MAS and RAD, even
        # when an optimiser inlined their functions (no harden:: node left to count)
        ops = audits.graph_ops(deployed_twin, expected, what)
        if shape.status == "pass" and ops.status == "fail":
            ops = Check("graph-ops", "pass", "MAS and RAD are there as the fresh export has them, inlined: "
                        "graph-structure matched the deployed graph node for node")  # fmt: skip
        elif source is None and ops.status == "fail" and deployment.manifest is not None:
            # no source to re-export: recognise harden's own bodies where an optimiser inlined them
            inlined = audits.graph_ops_inlined(onnx.load(str(deployment.onnx)), expected, deployment.manifest.ram)
            ops = inlined or ops
        expectations = [ops, audits.seed_dependence(engine, images, source_drops)]
    return [
        *expectations,
        shape,
        weight_check,
        audits.int8_calibration(deployed_twin, images),
        provenance.int8_provenance(deployment),
        provenance.float32_attention(deployed_twin, images, deployment.signed),
    ]


def not_judged(deployment: Deployment, twins: dict[str, nn.Module]) -> list[str]:
    """What the verdict cannot see with these twins (docs/design.md §6): a graph twin rebuilt from a
    broken file is the broken model, so without the source checkpoint export faults are invisible;
    an unsigned file has no recorded provenance at all."""
    blind = []
    if not deployment.signed:
        blind.append(
            "unsigned: no manifest — nothing records which checkpoint, export or calibration produced "
            f"{deployment.artefact.name}, so the audits that need that record are n/a"
        )
    if "source" in twins:
        if not deployment.signed:
            blind.append("the source twin is not tied to the file by a recorded checkpoint hash")
        return blind
    blind.append(
        "whether the export is faithful to the trained model: there is no source twin (--twin RUN_DIR), so the "
        "deployed weights are not compared with the checkpoint and a change made before or at export would be "
        "its own reference"
    )
    if deployment.precision == "fp32" or deployment.reference_file is None:
        blind.append(
            "survival against a reference: the graph twin is the deployed graph itself, so survival compares "
            "the engine with its own graph"
            + ("" if deployment.precision == "fp32" else " (pass --reference FILE.onnx, the file before quantisation)")
        )
    return blind


ARITHMETIC_IMAGES = 8


def engine_arithmetic(engine: Engine, precision: str, dataset: SegmentationDataset) -> ArithmeticRecord:
    """The engine's kernels on this hardware vs the deployed file as written, on the first images.

    For ONNX Runtime: the optimised session that verify attacks against the same file with every
    graph optimisation off (`harden.export.arithmetic`). A TensorRT engine has no "as written"
    mode; its reference is the precision twin, which the clean-parity gates compare already.
    """
    if not isinstance(engine, OnnxRuntimeEngine) or engine.as_written:
        return ArithmeticRecord("n/a", None, f"{engine.name}: compared with its precision twin by the parity gates")
    images, labels = collate_pad([dataset[i] for i in range(min(ARITHMETIC_IMAGES, len(dataset)))])
    interface = engine.interface
    assert interface is not None, "the engine is open"
    if interface.batch == 1:
        feeds = [interface.feed(image, DRAW_SEED) for image in images.split(1)]
    else:
        feeds = [interface.feed(images, DRAW_SEED)]
    size = (labels.shape[-2], labels.shape[-1])

    def to_label_size(logits: np.ndarray) -> np.ndarray:
        return interface.postprocess(torch.from_numpy(logits), size).numpy()

    verdict = audit_file(engine.path, precision, feeds, labels.numpy(), dataset.num_classes, interface.output,
                         engine.device, to_label_size)  # fmt: skip
    return ArithmeticRecord("pass" if verdict.passed else "fail", verdict)
