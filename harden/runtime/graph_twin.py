"""The graph twin: a gradient-enabled PyTorch module rebuilt from an exported ONNX file.

It interprets the ONNX graph node by node with the torch operations of `harden.runtime.torch_ops`,
including `harden::Mas`/`MaskedMas`/`Rad` (run by the same custom ops as training), so it is
the deployed graph itself — not the training code — that attacks differentiate (docs/design.md §5).
Interpreting an fp16 or int8 variant gives the precision twin: fp16 casts compute in fp16,
Q/DQ pairs fake-quantise with straight-through gradients using the scales in the graph.

A graph with a `rad_seed` input draws a fresh seed per forward pass unless one is fixed with
`harden.ram.fixed_rad_seed(twin, seed)`, exactly like a model with RAM layers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from harden.export.files import load_onnx
from harden.ram import RadSeeds, fixed_rad_seed
from harden.runtime.graph_program import GraphProgram, Observer, domain_of, op_name, opsets_of, topological
from harden.runtime.interface import ModelInterface, find_interface

__all__ = ["AUDIT_RAD_SEED", "GraphTwin", "Observer", "topological"]

AUDIT_RAD_SEED = 10_000  # the first evaluation draw's seed (harden.attacks.evaluate.DRAW_SEED)


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
        self.program = GraphProgram(model.graph, opsets_of(model), name)  # refuses what it cannot compute
        self.interface = interface or find_interface(model)
        self.takes_seed = self.interface.seed is not None
        self.seeds = RadSeeds()
        steps = self.program.steps
        self.nodes = [(step.domain, step.op_type, step.inputs, step.outputs, step.attrs) for step in steps]
        self.node_names = [step.name for step in steps]
        self.op_counts = Counter(op_name(domain_of(n), n.op_type) for n in model.graph.node)
        self.constant_names: list[str] = []
        for i, (constant_name, value) in enumerate(self.program.constants.items()):
            self.register_buffer(f"constant{i}", value, persistent=False)
            self.constant_names.append(constant_name)
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
        values: dict[str, torch.Tensor | None] = dict(self.constants())
        values[self.interface.input] = self.interface.preprocess(images)
        if self.interface.seed is not None:
            values[self.interface.seed] = self.seeds.start_forward().to(images.device)
        return self.program.run(values, self.observers)
