"""An ONNX graph compiled for the graph twin: every node's torch implementation chosen, at load.

Loading is where the twin says what it cannot do. `GraphProgram(model)`:
- reads the graph's `opset_import` and refuses an opset newer than the op table knows;
- picks each node's implementation for its domain's opset (`runtime/op_table.py`);
- runs each implementation's load-time check on the node's attributes (and its constant inputs);
- inlines an `If` whose condition is a constant of the graph (other control flow is refused);
and raises one `InputError` (exit 2) naming every node it cannot compute, with the op and the
reason. What remains can only fail on data (a shape the graph itself rejects): a twin never
computes a number its op table does not define.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from harden.errors import InputError
from harden.runtime import (  # noqa: F401  (each registers its ops in the table)
    torch_ops,
    torch_ops_conv,
    torch_ops_more,
    torch_ops_nn,
    torch_ops_ort,
    torch_ops_quant,
    torch_ops_resize,
    torch_ops_shape,
)
from harden.runtime.op_table import KNOWN_OPSETS, OPS, WANTED_OUTPUTS, Attributes, NodeInputs, Op, Value, resolve

Observer = Callable[[str, list[torch.Tensor | None], list[torch.Tensor], dict[str, Any]], None]


@dataclass(frozen=True)
class Step:
    """One node, ready to run."""

    name: str
    domain: str
    op_type: str
    fn: Op
    inputs: list[str]
    outputs: list[str]
    attrs: Attributes


def domain_of(node: onnx.NodeProto) -> str:
    return "" if node.domain == "ai.onnx" else node.domain  # two spellings of the standard domain


def op_name(domain: str, op_type: str) -> str:
    return f"{domain}::{op_type}" if domain else op_type


def to_torch(array: Any) -> torch.Tensor:
    return torch.from_numpy(array.copy())  # a writable copy (0-d arrays included); onnx's may be read-only


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    """The graph's opset per domain ("" for the standard one), refused if newer than the table knows."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import}
    for domain, version in opsets.items():
        known = KNOWN_OPSETS.get(domain)
        if known is not None and version > known:
            raise InputError(
                f"the graph imports opset {version} of {domain or 'ai.onnx'}; the graph twin knows opsets up to "
                f"{known}. Export with an older opset (e.g. torch.onnx.export(..., opset_version={known})), or verify "
                "with a source twin (--twin RUN_DIR)"
            )
    return opsets


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (tensors as torch tensors, subgraphs as GraphProto)."""
    values: dict[str, Any] = {}
    for attribute in node.attribute:
        if attribute.ref_attr_name:  # inside a function body: refers to the caller's attribute
            raise NotImplementedError(f"attribute {attribute.name} refers to a function attribute")
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = to_torch(numpy_helper.to_array(value))
        values[attribute.name] = value
    return values


class GraphProgram:
    """The nodes of `graph` as `Step`s in an order where every input is computed before use.

    Args:
        graph: the ONNX graph.
        opsets: its opset per domain (`opsets_of`).
        name: shown in messages (the file name).
    Attributes:
        steps: the nodes to run, in order.
        constants: the graph's initializers and those of inlined branches, by name.
    """

    def __init__(self, graph: onnx.GraphProto, opsets: dict[str, int], name: str = "graph") -> None:
        self.name = name
        self.constants: dict[str, torch.Tensor] = {
            i.name: to_torch(numpy_helper.to_array(i)) for i in graph.initializer
        }
        available = set(self.constants) | {i.name for i in graph.input}
        nodes = self._inline(list(graph.node), opsets)
        problems: dict[tuple[str, str], list[str]] = {}  # (op, reason) → the nodes it holds for
        steps: list[Step] = []
        known = dict(self.constants)  # values known at load: initializers and Constant outputs
        for i, node in enumerate(topological(nodes, available)):
            label = node.name or f"#{i}"
            domain = domain_of(node)
            try:
                attrs = attributes(node)
            except NotImplementedError as err:
                problems.setdefault((op_name(domain, node.op_type), str(err)), []).append(label)
                continue
            step_or_problem = _compile(node, label, domain, attrs, opsets, [known.get(n) for n in node.input])
            if isinstance(step_or_problem, str):
                problems.setdefault((op_name(domain, node.op_type), step_or_problem), []).append(label)
                continue
            steps.append(step_or_problem)
            if node.op_type == "Constant" and domain == "":
                value = step_or_problem.fn([], attrs)
                assert isinstance(value, torch.Tensor)
                known[node.output[0]] = value
        if problems:
            listed = [
                f"{op} ×{len(labels)} ({', '.join(labels[:3])}{', …' if len(labels) > 3 else ''}): {reason}"
                for (op, reason), labels in problems.items()
            ]
            count = sum(len(labels) for labels in problems.values())
            raise InputError(
                f"{name}: the graph twin cannot compute {count} node(s): {'; '.join(listed)}. What still works: a "
                "source twin (--twin RUN_DIR) to craft the white-box attacks, and Square and noise on the engine "
                "itself. Support for an op goes in runtime/torch_ops*.py (docs/graph_twin_ops.md)"
            )
        self.steps = steps

    def _inline(self, nodes: list[onnx.NodeProto], opsets: dict[str, int]) -> list[onnx.NodeProto]:
        """Replace each `If` whose condition is a constant of the graph by the branch it takes."""
        constants = dict(self.constants)
        for node in nodes:
            if node.op_type == "Constant" and domain_of(node) == "" and node.attribute:
                attribute = node.attribute[0]
                if attribute.name == "value":
                    constants[node.output[0]] = to_torch(numpy_helper.to_array(attribute.t))
        flat: list[onnx.NodeProto] = []
        for node in nodes:
            if node.op_type != "If" or domain_of(node) != "" or node.input[0] not in constants:
                flat.append(node)
                continue
            branch = {a.name: a.g for a in node.attribute}[
                "then_branch" if bool(constants[node.input[0]]) else "else_branch"
            ]
            self.constants.update({i.name: to_torch(numpy_helper.to_array(i)) for i in branch.initializer})
            flat += self._inline(list(branch.node), opsets)
            flat += [
                onnx.helper.make_node("Identity", [inner.name], [outer], name=f"{node.name or 'If'}/{outer}")
                for inner, outer in zip(branch.output, node.output, strict=True)
            ]
        return flat

    def run(
        self, values: dict[str, torch.Tensor | None], observers: list[Observer] | tuple[Observer, ...] = ()
    ) -> dict[str, torch.Tensor | None]:
        """Run every step on `values` (graph inputs and constants by name, filled in place); returns
        all values."""
        values[""] = None  # an omitted optional input
        for step in self.steps:
            inputs = on_one_device([values[name] for name in step.inputs])
            try:
                result = step.fn(inputs, step.attrs)
            except Exception as err:
                raise InputError(
                    f"graph twin: node {step.name} ({op_name(step.domain, step.op_type)} → {', '.join(step.outputs)}) "
                    f"failed on this input: {err}. Verify with a source twin (--twin RUN_DIR) instead; Square and "
                    "noise still run on the engine"
                ) from err
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for observer in observers:
                observer(step.op_type, inputs, results, step.attrs)
            for name, value in zip(step.outputs, results, strict=False):
                if name:
                    values[name] = value
        return values


# an integer tensor this small on an accelerator is shape arithmetic (a constant index, a size)
SHAPE_LIKE_NUMEL = 64


def on_one_device(inputs: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The node's inputs on one device (`device_for`); unchanged when they already are."""
    target = device_for(inputs)
    return inputs if target is None else [t.to(target) if t is not None else None for t in inputs]


def device_for(inputs: list[torch.Tensor | None]) -> torch.device | None:
    """Where a node whose inputs sit on several devices runs (None: they share one). On a GPU the
    graph's constants are buffers on the GPU while Shape, Size and Range give CPU tensors (shape
    arithmetic stays on the host, without a synchronisation per shape value), so a node may meet
    both: when every accelerator input is a small integer tensor the node is shape arithmetic and
    runs on the CPU, else everything moves to the accelerator."""
    devices = {t.device for t in inputs if t is not None}
    if len(devices) <= 1:
        return None
    accelerated = [t for t in inputs if t is not None and t.device.type != "cpu"]
    if all(not t.is_floating_point() and t.numel() <= SHAPE_LIKE_NUMEL for t in accelerated):
        return torch.device("cpu")
    return accelerated[0].device


def _compile(
    node: onnx.NodeProto,
    label: str,
    domain: str,
    attrs: Attributes,
    opsets: dict[str, int],
    constant_inputs: list[Value],
) -> Step | str:
    """The node's `Step`, or why it cannot be computed."""
    if any(isinstance(v, onnx.GraphProto) for v in attrs.values()):
        if node.op_type == "If":
            return "its condition is not a constant of the graph (only such an If is inlined)"
        return "control flow with a subgraph is not supported"
    impls = OPS.get((domain, node.op_type), [])
    if not impls:
        return "the op is not in the twin's table"
    if domain not in opsets:
        return f"the graph imports no opset for domain {domain!r}"
    opset = opsets[domain]
    if domain == "" and not onnx_defines(node.op_type, opset):
        return f"ONNX defines no {node.op_type} at opset {opset} (ONNX Runtime would refuse the file too)"
    impl = resolve(domain, node.op_type, opset)
    if impl is None:
        covered = ", ".join(f"{i.since}–{i.until or KNOWN_OPSETS.get(domain, '')}" for i in impls)
        return f"not defined at opset {opset} in the twin's table (it covers opsets {covered})"
    if node.op_type == "Split" and domain == "" and "num_outputs" not in attrs:
        attrs["num_outputs"] = len(node.output)  # before opset 18: as many parts as outputs
    if impl.refuse is not None:
        reason = impl.refuse(attrs, NodeInputs(list(node.input), constant_inputs))
        if reason:
            return reason
    named = max((i + 1 for i, output in enumerate(node.output) if output), default=0)
    if named > impl.outputs:
        return f"output {named} ({node.output[named - 1]}) is not computed by the twin (it computes {impl.outputs})"
    if impl.outputs > 1:
        attrs[WANTED_OUTPUTS] = named
    return Step(label, domain, node.op_type, impl.fn, list(node.input), list(node.output), attrs)


def onnx_defines(op_type: str, opset: int) -> bool:
    """Whether the standard domain has `op_type` at `opset` (onnx's own operator schemas)."""
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


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
