"""harden's MAS and RAD bodies, recognised in a graph whose optimiser inlined them.

ONNX Runtime's basic optimiser (and others) replaces every `harden::Mas` / `harden::Rad` node by
its function body and folds what it can: the graph-ops audit then finds no harden node to count.
Without a source twin to re-export and compare with (`harden.runtime.structure`), this module
looks for the bodies themselves. harden knows them (`harden.export.onnx_ops.function_body`) and
the export manifest records their parameters (MAS's threshold, RAD's drop probability), so a body
is recognised by walking it backwards from its output alongside the deployed graph:

- each body node must meet a deployed node of the same op type and attributes, input by input;
- a body input (MAS's logits, RAD's attention and seed) binds to whatever deployed value meets it,
  the same value each time;
- a body value computed from constants alone (the gain from the threshold, RAD's keep threshold
  from p) may meet a folded constant: the body's sub-expression is evaluated with the manifest's
  parameters (onnx's reference evaluator) and compared by value;
- RAD's `counter` (its call index) may be any integer.

Candidates are the deployed nodes that end a body (MAS: `Softmax`; RAD: `Where`) and hold its
telltale op within a few steps (MAS: `Softsign`; RAD: `BitwiseAnd`): a candidate that does not
match is a body that differs, and is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from harden.export.onnx_ops import MAS, MASKED_MAS, RAD, function_body

TELLTALE = {MAS: "Softsign", MASKED_MAS: "Softsign", RAD: "BitwiseAnd"}
LOOK_BACK = 4  # how many producers back a candidate must hold the telltale op
FREE_INTEGERS = frozenset({"counter"})  # body attributes whose value may differ from node to node


@dataclass
class Inlined:
    """What `find_inlined` recognised: MAS and RAD bodies, and candidates that differ."""

    mas: int = 0
    rad: int = 0
    counters: list[int] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # "Softmax 'name': why"


def find_inlined(model: onnx.ModelProto, threshold: float | None, drop_p: float | None) -> Inlined:
    """Count the inlined MAS bodies at `threshold` and RAD bodies at `drop_p` in `model`'s graph."""
    graph = _Deployed(model)
    found = Inlined()
    for op_type, params in ((MAS, {"threshold": threshold}), (RAD, {"p": drop_p})):
        bodies = [function_body(op_type)] + ([function_body(MASKED_MAS)] if op_type == MAS else [])
        end_op = bodies[0].node[-1].op_type
        for node in graph.nodes:
            if node.op_type != end_op or not graph.holds(node, TELLTALE[op_type], LOOK_BACK):
                continue
            matches = [_Match(body, graph, params) for body in bodies]
            if any(m.matches(m.body.output[0], node.output[0]) for m in matches):
                match = next(m for m in matches if m.matched)
                found.counters += match.counters
                found.mas += op_type == MAS
                found.rad += op_type == RAD
            else:
                why = matches[0].why or "its inputs are wired otherwise"
                label = node.name or node.output[0]
                found.differs.append(f"{node.op_type} '{label}' is not harden's {op_type} body: {why}")
    return found


class _Deployed:
    """The deployed graph: each value's producer and every constant's value."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute:
                self.constants[node.output[0]] = np.asarray(_constant_value(node.attribute[0]))

    def holds(self, node: onnx.NodeProto, op_type: str, depth: int) -> bool:
        frontier = [node]
        for _ in range(depth):
            frontier = [self.producer[i] for n in frontier for i in n.input if i in self.producer]
            if any(n.op_type == op_type for n in frontier):
                return True
        return False


class _Match:
    """One walk of a body against the deployed graph (see the module docstring)."""

    def __init__(self, body: onnx.FunctionProto, graph: _Deployed, params: dict[str, float | None]) -> None:
        self.body, self.graph, self.params = body, graph, params
        self.producer = {out: n for n in body.node for out in n.output}
        self.formals = set(body.input)
        self.bound: dict[str, str] = {}
        self.counters: list[int] = []
        self.memo: dict[tuple[str, str], bool] = {}
        self.why = ""
        self.matched = False

    def matches(self, ref: str, dep: str) -> bool:
        self.matched = self._match(ref, dep)
        return self.matched

    def _match(self, ref: str, dep: str) -> bool:
        if (ref, dep) not in self.memo:
            self.memo[(ref, dep)] = self._compare(ref, dep)
        return self.memo[(ref, dep)]

    def _compare(self, ref: str, dep: str) -> bool:
        if ref == "" or dep == "":
            return ref == dep
        if ref in self.formals:
            return self.bound.setdefault(ref, dep) == dep
        node = self.producer[ref]
        free = _free_attribute(node)
        if free is not None:  # RAD's counter: any integer constant
            value = self.graph.constants.get(dep)
            if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.integer):
                return self._fail(f"its {free} is not an integer constant")
            self.counters.append(int(value.reshape(-1)[0]))
            return True
        if dep in self.graph.constants:
            if not self._constant(ref):
                return self._fail(f"a constant where the body computes from its inputs ({node.op_type})")
            try:
                expected = self._evaluate(ref)
            except KeyError as missing:
                return self._fail(f"{missing.args[0]}: the export manifest does not say what to compare with")
            found = self.graph.constants[dep]
            if expected.shape != found.shape and expected.size != found.size:
                return self._fail(f"a constant of shape {found.shape} where the body has {expected.shape}")
            rtol = 1e-3 if found.dtype == np.float16 else 1e-5  # a half-precision file rounds the parameters
            if not np.allclose(found.astype(np.float64).reshape(-1), expected.astype(np.float64).reshape(-1),
                               rtol=rtol, atol=1e-7):  # fmt: skip
                return self._fail(f"{node.op_type} constant {found.reshape(-1)[:4]} where the manifest's parameters "
                                  f"give {expected.reshape(-1)[:4]}")  # fmt: skip
            return True
        deployed = self.graph.producer.get(dep)
        if deployed is None:
            return self._fail(f"graph input '{dep}' where the body has {node.op_type}")
        counter = next((i for i in node.input if i in self.producer and _free_attribute(self.producer[i])), None)
        if node.op_type == "Add" and counter is not None and deployed.op_type != "Add":
            # x + counter with counter 0 is x: ONNX Runtime's no-op elimination drops the Add
            self.counters.append(0)
            return self._match(next(i for i in node.input if i != counter), dep)
        if node.op_type == "CastLike" and deployed.op_type == "Cast":
            # an inliner that knows the types writes CastLike(x, like) as Cast(x, to=like's type)
            return self._match(node.input[0], deployed.input[0])
        if deployed.op_type != node.op_type or deployed.domain not in ("", "ai.onnx"):
            return self._fail(f"{deployed.op_type} '{deployed.name}' where the body has {node.op_type}")
        if _attributes(deployed) != _attributes(node):
            return self._fail(f"{deployed.op_type} '{deployed.name}' has other attributes than the body's")
        ref_inputs, dep_inputs = list(node.input), list(deployed.input)
        if len(dep_inputs) != len(ref_inputs):
            return self._fail(f"{deployed.op_type} '{deployed.name}' has {len(dep_inputs)} inputs, the body's "
                              f"{len(ref_inputs)}")  # fmt: skip
        return all(self._match(r, d) for r, d in zip(ref_inputs, dep_inputs, strict=True))

    def _fail(self, why: str) -> bool:
        self.why = self.why or why  # the first difference found is the one named
        return False

    def _constant(self, ref: str) -> bool:
        """Whether the body computes `ref` from constants and parameters alone."""
        if ref in self.formals:
            return False
        node = self.producer.get(ref)
        if node is None or _free_attribute(node) is not None:
            return False
        inputs = node.input[:1] if node.op_type == "CastLike" else node.input  # `like` gives only a type
        return all(self._constant(i) for i in inputs if i)

    def _evaluate(self, ref: str) -> np.ndarray:
        """The body's value `ref` with the manifest's parameters (onnx's reference evaluator)."""
        needed: list[onnx.NodeProto] = []

        def visit(name: str) -> None:
            node = self.producer[name]
            if node in needed:
                return
            for i in node.input[:1] if node.op_type == "CastLike" else node.input:
                if i:
                    visit(i)
            needed.append(self._concrete(node))

        visit(ref)
        opset = [helper.make_opsetid("", 21)]
        graph = helper.make_graph(needed, "body", [], [helper.make_empty_tensor_value_info(ref)])
        model = helper.make_model(graph, opset_imports=opset)
        (value,) = ReferenceEvaluator(model).run(None, {})  # a list: the one output asked for
        return np.asarray(value)

    def _concrete(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """`node` with its references to the function's attributes replaced by the parameters (and
        CastLike, whose `like` is a body input, as a cast to float32: compared by value anyway)."""
        if node.op_type == "CastLike":
            return helper.make_node("Cast", [node.input[0]], list(node.output), to=onnx.TensorProto.FLOAT)
        reference = next((a for a in node.attribute if a.ref_attr_name), None)
        if reference is None:
            return node
        value = self.params.get(reference.ref_attr_name)
        if value is None:
            raise KeyError(f"no recorded {reference.ref_attr_name}")
        kind = "value_float" if reference.type == onnx.AttributeProto.FLOAT else "value_int"
        return helper.make_node("Constant", [], list(node.output), **{kind: value})  # type: ignore[arg-type]


def _free_attribute(node: onnx.NodeProto) -> str | None:
    name = next((a.ref_attr_name for a in node.attribute if a.ref_attr_name), None)
    return name if name in FREE_INTEGERS else None


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    """The node's attributes, with the op's defaults filled in (an optimiser may write them out)."""
    out: dict[str, object] = {}
    try:
        schema = onnx.defs.get_schema(node.op_type, domain=node.domain)
        for name, attribute_schema in schema.attributes.items():
            if attribute_schema.default_value.type != onnx.AttributeProto.UNDEFINED:
                default = helper.get_attribute_value(attribute_schema.default_value)
                out[name] = default.decode() if isinstance(default, bytes) else default
    except onnx.defs.SchemaError:
        pass
    for attribute in node.attribute:
        if attribute.ref_attr_name:
            continue
        value = helper.get_attribute_value(attribute)
        value = numpy_helper.to_array(value).tolist() if isinstance(value, onnx.TensorProto) else value
        out[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _constant_value(attribute: onnx.AttributeProto) -> object:
    value = helper.get_attribute_value(attribute)
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
