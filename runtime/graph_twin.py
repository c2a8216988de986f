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
from harden.export.onnx_export import IMAGE, LOGITS, RAD_SEED
from harden.ram import RadSeeds
from harden.runtime.torch_ops import OPS

Observer = Callable[[str, list[torch.Tensor | None], list[torch.Tensor], dict[str, Any]], None]


def _to_torch(array: Any) -> torch.Tensor:
    return torch.from_numpy(array.copy())  # a writable copy (0-d arrays included); onnx's may be read-only


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

    def __init__(self, model: onnx.ModelProto, name: str = "graph") -> None:
        super().__init__()
        self.name = name
        graph = model.graph
        unsupported = sorted({_op_name(n) for n in graph.node if (n.domain, n.op_type) not in OPS})
        if unsupported:
            raise InputError(
                f"{name}: the graph twin cannot interpret {', '.join(unsupported)}; "
                "add them to runtime/torch_ops.py, or verify with --twin RUN_DIR (the source twin)"
            )
        inputs = [i.name for i in graph.input]
        if IMAGE not in inputs or [o.name for o in graph.output] != [LOGITS]:
            raise InputError(f"{name}: expected inputs {IMAGE!r}[, {RAD_SEED!r}] and output {LOGITS!r}, got {inputs}")
        self.takes_seed = RAD_SEED in inputs
        self.seeds = RadSeeds()
        self.nodes = [(n.domain, n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node]
        self.node_names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(graph.node)]
        self.op_counts = Counter(_op_name(n) for n in graph.node)
        self.constant_names: list[str] = []
        for i, initializer in enumerate(graph.initializer):
            self.register_buffer(f"constant{i}", _to_torch(numpy_helper.to_array(initializer)), persistent=False)
            self.constant_names.append(initializer.name)
        # observers see (op_type, inputs, outputs, attributes) of every node: the audits use them
        self.observers: list[Observer] = []
        self._rad_ps = [float(attrs["p"]) for domain, op, *_, attrs in self.nodes if (domain, op) == ("harden", "Rad")]

    @classmethod
    def from_file(cls, path: Path) -> GraphTwin:
        return cls(load_onnx(path), name=Path(path).name)

    def constants(self) -> dict[str, torch.Tensor]:
        """The graph's initializers by name (weights, quantisation scales, shapes)."""
        return {name: getattr(self, f"constant{i}") for i, name in enumerate(self.constant_names)}

    @property
    def drops(self) -> bool:
        """Whether the graph drops attention with RAD (its output depends on the seed)."""
        return self.takes_seed and any(p > 0 for p in self._rad_ps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.intermediates(images)[LOGITS]
        assert logits is not None
        return logits.float()

    def run_observed(self, images: torch.Tensor, observer: Observer) -> None:
        """One forward pass without gradients with `observer` watching every node (the audits)."""
        self.observers.append(observer)
        try:
            with torch.no_grad():
                self(images)
        finally:
            self.observers.remove(observer)

    def intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Every value of the graph by name (inputs, constants, each node's outputs) for `images`."""
        values: dict[str, torch.Tensor | None] = {"": None}
        values.update(self.constants())
        values[IMAGE] = images
        if self.takes_seed:
            values[RAD_SEED] = self.seeds.start_forward().to(images.device)
        for domain, op_type, inputs, outputs, attrs in self.nodes:
            try:
                result = OPS[(domain, op_type)]([values[name] for name in inputs], attrs)
            except (NotImplementedError, RuntimeError, IndexError) as err:
                raise InputError(f"graph twin: node {op_type} ({', '.join(outputs)}) failed: {err}") from err
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for observer in self.observers:
                observer(op_type, [values[name] for name in inputs], results, attrs)
            for name, value in zip(outputs, results, strict=False):
                values[name] = value
        return values
