"""The graph twin: a gradient-enabled PyTorch module rebuilt from an exported ONNX file.

It interprets the ONNX graph node by node with the torch operations of `harden.runtime.torch_ops`,
including `harden::Mas`/`MaskedMas`/`Rad` (run by the same custom ops as training), so it is
the deployed graph itself — not the training code — that attacks differentiate (DESIGN.md §5).
Interpreting an fp16 or int8 variant gives the precision twin: fp16 casts compute in fp16,
Q/DQ pairs fake-quantise with straight-through gradients using the scales in the graph.

A graph with a `rad_seed` input draws a fresh seed per forward pass unless one is fixed with
`harden.ram.fixed_rad_seed(twin, seed)`, exactly like a model with RAM layers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from harden.errors import InputError
from harden.export.manifest import load_onnx
from harden.ram import RadSeeds, fixed_rad_seed
from harden.runtime import torch_ops_nn, torch_ops_ort  # noqa: F401  (register their ops in OPS)
from harden.runtime.interface import ModelInterface, find_interface
from harden.runtime.torch_ops import OPS

AUDIT_RAD_SEED = 10_000  # the first evaluation draw's seed (harden.attacks.evaluate.DRAW_SEED)

Observer = Callable[[str, list[torch.Tensor | None], list[torch.Tensor], dict[str, Any]], None]


def _to_torch(array: Any) -> torch.Tensor:
    return torch.from_numpy(array.copy())  # a writable copy (0-d arrays included); onnx's may be read-only


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain == "ai.onnx" else node.domain  # two spellings of the standard domain


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = _to_torch(numpy_helper.to_array(value))
        elif isinstance(value, onnx.GraphProto):
            raise InputError(f"node {node.name or node.op_type} has a subgraph; the graph twin has no control flow")
        values[attribute.name] = value
    return values


class GraphTwin(nn.Module):
    """`GraphTwin(onnx_model)(images) → logits`, differentiable with respect to the images.

    Args:
        model: the exported graph (`harden.export.onnx_export` conventions: input `image`, optional
            `rad_seed`, output `logits`).
        name: shown in reports, e.g. the file name.
    """

    def __init__(self, model: onnx.ModelProto, name: str = "graph", interface: ModelInterface | None = None) -> None:
        super().__init__()
        self.name = name
        graph = model.graph
        _refuse_missing_ops(graph, name)
        self.interface = interface or find_interface(model)
        self.takes_seed = self.interface.seed is not None
        self.seeds = RadSeeds()
        known = {i.name for i in graph.initializer} | {i.name for i in graph.input}
        ordered = topological(list(graph.node), known)
        self.nodes = [(_domain(n), n.op_type, list(n.input), list(n.output), _attributes(n)) for n in ordered]
        for _, op_type, _, outputs, attrs in self.nodes:
            if op_type == "Split" and "num_outputs" not in attrs:  # before opset 18: as many parts as outputs
                attrs["num_outputs"] = len(outputs)
        self.node_names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(ordered)]
        self.op_counts = Counter(_op_name(n) for n in graph.node)
        self.constant_names: list[str] = []
        for i, initializer in enumerate(graph.initializer):
            self.register_buffer(f"constant{i}", _to_torch(numpy_helper.to_array(initializer)), persistent=False)
            self.constant_names.append(initializer.name)
        # observers see (op_type, inputs, outputs, attributes) of every node: the audits use them
        self.observers: list[Observer] = []
        self._rad_ps = [float(attrs["p"]) for domain, op, *_, attrs in self.nodes if (domain, op) == ("harden", "Rad")]

    @classmethod
    def from_file(cls, path: Path, interface: ModelInterface | None = None) -> GraphTwin:
        return cls(load_onnx(path), name=Path(path).name, interface=interface)

    def constants(self) -> dict[str, torch.Tensor]:
        """The graph's initializers by name (weights, quantisation scales, shapes)."""
        return {name: getattr(self, f"constant{i}") for i, name in enumerate(self.constant_names)}

    @property
    def drops(self) -> bool:
        """Whether the graph drops attention with RAD (its output depends on the seed)."""
        return self.takes_seed and any(p > 0 for p in self._rad_ps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images → logits at the image size (the interface's pre- and postprocessing)."""
        if self.interface.batch == 1 and images.shape[0] != 1:  # a static export: one image per pass
            return torch.cat([self(image) for image in images.split(1)])
        logits = self.intermediates(images)[self.interface.output]
        assert logits is not None
        return self.interface.postprocess(logits, (images.shape[-2], images.shape[-1])).float()

    def run_observed(self, images: torch.Tensor, observer: Observer) -> None:
        """One forward pass without gradients with `observer` watching every node (the audits), on
        one fixed RAD draw: an audit's figure must not depend on the global random state (a
        saturation rate near its limit passed or failed with whichever draw came up)."""
        self.observers.append(observer)
        try:
            with torch.no_grad(), fixed_rad_seed(self, AUDIT_RAD_SEED):
                self(images)
        finally:
            self.observers.remove(observer)

    def intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Every value of the graph by name (inputs, constants, each node's outputs) for `images`."""
        values: dict[str, torch.Tensor | None] = {"": None}
        values.update(self.constants())
        values[self.interface.input] = self.interface.preprocess(images)
        if self.interface.seed is not None:
            values[self.interface.seed] = self.seeds.start_forward().to(images.device)
        for domain, op_type, inputs, outputs, attrs in self.nodes:
            try:
                result = OPS[(domain, op_type)]([values[name] for name in inputs], attrs)
            except (NotImplementedError, RuntimeError, IndexError, TypeError, ValueError) as err:
                raise InputError(
                    f"graph twin: node {op_type} ({', '.join(outputs)}) failed: {err}. Verify with a source twin "
                    "(--twin RUN_DIR) instead; Square and noise still run on the engine"
                ) from err
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for observer in self.observers:
                observer(op_type, [values[name] for name in inputs], results, attrs)
            for name, value in zip(outputs, results, strict=False):
                values[name] = value
        return values


def _refuse_missing_ops(graph: onnx.GraphProto, name: str) -> None:
    """Exit 2 listing every op the twin cannot interpret, with its count and node names."""
    missing: dict[str, list[str]] = {}
    for i, node in enumerate(graph.node):
        if (_domain(node), node.op_type) not in OPS:
            missing.setdefault(_op_name(node), []).append(node.name or f"#{i}")
    if not missing:
        return
    listed = "; ".join(
        f"{op} ×{len(nodes)} ({', '.join(nodes[:3])}{', …' if len(nodes) > 3 else ''})" for op, nodes in missing.items()
    )
    raise InputError(
        f"{name}: the graph twin cannot interpret {len(missing)} op type(s): {listed}. What still works: a source "
        "twin (--twin RUN_DIR) to craft the white-box attacks, and Square and noise on the engine itself. "
        "Support for an op goes in runtime/torch_ops*.py"
    )


def topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` in an order where every input is computed before use (ONNX requires it, but some
    tools, e.g. float16 converters, write nodes out of order and ONNX Runtime accepts them).
    Stable: a graph already in order is returned as it is."""
    known = set(available) | {""}
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        waiting = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            missing = sorted({n for node in waiting for n in node.input if n not in known})
            raise InputError(f"the graph is not a DAG or uses undefined values: {', '.join(missing[:5])}")
        pending = waiting
    return ordered
