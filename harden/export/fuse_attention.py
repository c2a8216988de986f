"""Fuse each exported RAM attention (MAS + RAD) into one `harden::RobustAttention` node.

`harden export` writes a RAM attention layer as

    logits  = MatMul(Mul(q, scale), k_t)          q (B, H, Nq, d), k_t (B, H, d, Nk), scale a scalar constant
    applied = harden::Rad(harden::Mas(logits), rad_seed)
    out     = MatMul(applied, v)

`fuse_robust_attention_` rewrites every such chain (each intermediate used only by the next
step) into

    k   = Transpose(k_t, perm=[0, 1, 3, 2])
    out = harden::RobustAttention(q, k, v, rad_seed)     scale, threshold, counter, p

whose function body is the chain itself, so ONNX Runtime computes what it computed before,
while TensorRT runs the RobustAttention plugin: the fused Triton kernel the PyTorch twin runs on
a GPU, with no N×N matrix in memory. The ONNX files `harden export` writes stay unfused (ONNX
Runtime and the graph twin read them); the engine builder fuses its own copy. Chains that do
not fit (no MAS or no RAD, a temperature division, a shared intermediate) are left as they are,
each with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from harden.export.onnx_export import finish_model
from harden.export.onnx_ops import DOMAIN, MAS, RAD, ROBUST_ATTENTION, plugin_attributes


@dataclass(frozen=True)
class _Chain:
    scale_mul: onnx.NodeProto
    logits: onnx.NodeProto
    mas: onnx.NodeProto
    rad: onnx.NodeProto
    output: onnx.NodeProto
    q: str
    scale: float

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [self.scale_mul, self.logits, self.mas, self.rad, self.output]


@dataclass(frozen=True)
class FusionReport:
    """How many chains were fused, and why others were not (one reason per Rad node left)."""

    fused: int
    skipped: list[str]


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {name: node for node in graph.node for name in node.output}
        self.uses: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.uses.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}
        self.initializers = {t.name: t for t in graph.initializer}

    def only_use(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, or None if it has several readers or is a graph output."""
        readers = self.uses.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def made_by(self, name: str, op_type: str, domain: str = "") -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type and node.domain == domain else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (initializer or Constant node), else None."""
        if name in self.initializers:
            array = numpy_helper.to_array(self.initializers[name])
        elif (node := self.made_by(name, "Constant")) is not None and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
        else:
            return None
        return float(array.reshape(-1)[0]) if array.size == 1 and np.issubdtype(array.dtype, np.floating) else None


def _match(g: _Graph, rad: onnx.NodeProto) -> _Chain | str:
    """The chain ending at `rad`, or why it cannot be fused."""
    mas = g.made_by(rad.input[0], MAS, DOMAIN)
    if mas is None or g.only_use(mas.output[0]) is not rad:
        return "its attention does not come straight from one harden::Mas"
    logits = g.made_by(mas.input[0], "MatMul")
    if logits is None or g.only_use(logits.output[0]) is not mas:
        return "MAS's logits are not a MatMul used only by it (a temperature or bias in between?)"
    scale_mul = g.made_by(logits.input[0], "Mul")
    if scale_mul is None or g.only_use(scale_mul.output[0]) is not logits:
        return "the queries are not scaled by one Mul before the MatMul"
    scale, q = g.scalar(scale_mul.input[1]), scale_mul.input[0]
    if scale is None:
        scale, q = g.scalar(scale_mul.input[0]), scale_mul.input[1]
    if scale is None:
        return "the query scale is not a scalar constant"
    output = g.only_use(rad.output[0])
    if output is None or output.op_type != "MatMul" or output.domain or output.input[0] != rad.output[0]:
        return "RAD's output is not multiplied by the values in one MatMul"
    return _Chain(scale_mul, logits, mas, rad, output, q, scale)


def _attribute(node: onnx.NodeProto, name: str) -> object:
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def fuse_robust_attention_(model: onnx.ModelProto) -> FusionReport:
    """Rewrite `model` in place (see the module docstring); returns what was fused and skipped."""
    g = _Graph(model.graph)
    rads = [node for node in model.graph.node if node.op_type == RAD and node.domain == DOMAIN]
    chains, skipped = [], []
    for rad in rads:
        match = _match(g, rad)
        if isinstance(match, str):
            skipped.append(f"{rad.name or rad.output[0]}: {match}")
        else:
            chains.append(match)
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of a chain's last node → the nodes replacing the chain
    removed: set[int] = set()
    for chain in chains:
        k_t, v, out = chain.logits.input[1], chain.output.input[1], chain.output.output[0]
        k = f"{out}_keys"
        transpose = helper.make_node("Transpose", [k_t], [k], perm=[0, 1, 3, 2], name=f"{out}_transpose_keys")
        fused = helper.make_node(
            ROBUST_ATTENTION,
            [chain.q, k, v, chain.rad.input[1]],
            [out],
            name=f"{out}_robust_attention",
            domain=DOMAIN,
            scale=chain.scale,
            threshold=_attribute(chain.mas, "threshold"),
            counter=_attribute(chain.rad, "counter"),
            p=_attribute(chain.rad, "p"),
            **plugin_attributes(),
        )
        removed |= {id(node) for node in chain.nodes}
        replaced[id(chain.output)] = [transpose, fused]
    nodes = []
    for node in model.graph.node:  # in order: each fused node sits where its chain ended
        if id(node) in replaced:
            nodes += replaced[id(node)]
        elif id(node) not in removed:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    still_read = {name for node in nodes for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in still_read]  # the chains' scale constants
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    gone = {name for chain in chains for node in chain.nodes[:-1] for name in node.output}
    kept_info = [value for value in model.graph.value_info if value.name not in gone]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    finish_model(model)
    return FusionReport(len(chains), skipped)
