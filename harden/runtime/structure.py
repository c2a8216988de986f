"""Structure, not only op types: is the deployed graph the one its source exports to?

The graph-ops audit counts harden's MAS and RAD nodes; the rest of the graph was compared with
nothing, so a re-signed file that gained a trigger path (a slice of the input → a reduction → a
comparison → `Where` onto the logits) passed every gate: attacks never reach the trigger. This
audit re-exports the source model (the run the manifest ties by checkpoint hash) in memory with
the recorded options and compares the two graphs node by node:

- Each value gets a structural signature: a graph input its position; a constant its dtype and
  shape (and its values when it is a small integer tensor or a `Constant` node — shapes, axes,
  thresholds — but never weights, which the weights audit compares, nor a Q/DQ node's inputs —
  quantised weights, scales, zero points —, which the int8-provenance audit re-derives); a
  node's output the hash of its domain, op type, attributes and its inputs' signatures. Node and
  tensor names are ignored.
- A node added, removed or rewired changes the multiset of signatures; the audit names the first
  deployed nodes that the fresh export does not have (those whose inputs it does have: the roots
  of the change) and the fresh export's nodes that are missing.
- A file that ONNX Runtime's basic or extended optimiser rewrote (inlined the MAS functions,
  folded constants, fused Conv+Add) is faithful: the same rewrite is applied to the fresh export,
  and a match at any level passes, naming the level. An int8 reference is quantised with the
  recorded recipe's settings on one calibration image: the Q/DQ structure does not depend on
  the calibration values.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from harden.attacks.checks import Check
from harden.export.manifest import ExportManifest
from harden.ram import has_rad
from harden.runtime.twins import Deployment

SMALL_CONSTANT = 64  # integer constants up to this many elements are compared by value (shapes, axes, indices)
OUTPUT = "graph output"  # the op of the pseudo-node each graph output adds (its wiring is compared too)
REWRITES = ("none", "basic", "extended")  # ONNX Runtime optimisation levels a faithful re-save may have used


@dataclass(frozen=True)
class Node:
    signature: str
    name: str
    op: str
    inputs: tuple[str, ...]  # the signatures of its inputs


@dataclass(frozen=True)
class Structure:
    """A graph's node signatures (with each one's name and op type for messages) and the
    signatures of its values."""

    nodes: list[Node]  # in graph order, then one pseudo-node per graph output
    values: set[str]  # every value's signature (inputs, constants, node outputs)

    def counts(self) -> Counter[str]:
        return Counter(node.signature for node in self.nodes)


def structure(model: onnx.ModelProto) -> Structure:
    """The structural signatures of `model`'s main graph (see the module docstring)."""
    graph = model.graph
    # quantised weights and biases, scales and zero points follow the calibration ranges: compared
    # by shape only (int8-provenance re-derives their values)
    quantisation = {name for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                    for name in node.input}  # fmt: skip
    initializers = {t.name for t in graph.initializer}
    signature: dict[str, str] = {"": "none"}
    for position, value in enumerate(v for v in graph.input if v.name not in initializers):
        signature[value.name] = f"input:{position}"
    for tensor in graph.initializer:
        signature[tensor.name] = _constant(tensor, by_value=tensor.name not in quantisation)
    nodes = []
    for node in graph.node:
        inputs = [signature.get(name, f"unknown:{name}") for name in node.input]
        attributes = sorted((a.name, _attribute(a)) for a in node.attribute)
        digest = _hash(node.domain or "ai.onnx", node.op_type, attributes, inputs)
        nodes.append(Node(digest, node.name, node.op_type, tuple(inputs)))
        for i, output in enumerate(node.output):
            signature[output] = f"{digest}:{i}"
    for position, value in enumerate(graph.output):  # rewiring the outputs is a change too
        wired = signature.get(value.name, "unknown")
        nodes.append(Node(_hash("output", position, wired), value.name, OUTPUT, (wired,)))
    return Structure(nodes, set(signature.values()))


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _constant(tensor: onnx.TensorProto, *, by_value: bool) -> str:
    text = f"const:{tensor.data_type}:{tuple(tensor.dims)}"
    array = numpy_helper.to_array(tensor)
    integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    if by_value and integer and array.size <= SMALL_CONSTANT:
        text += ":" + _hash(array.tolist())
    return text


def _attribute(attribute: onnx.AttributeProto) -> str:
    if attribute.type == onnx.AttributeProto.TENSOR:  # a Constant node's value: small, compared by value
        array = numpy_helper.to_array(attribute.t)
        return f"tensor:{array.dtype}:{array.shape}:{_hash(array.tolist())}"
    if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        return repr([sorted(structure(onnx.helper.make_model(g)).counts().items()) for g in graphs])
    return repr(onnx.helper.get_attribute_value(attribute))


@dataclass(frozen=True)
class Difference:
    added: list[tuple[str, str]]  # (op type, node name) in the deployed graph, not in the reference
    removed: list[tuple[str, str]]  # in the reference, not in the deployed graph
    roots: list[tuple[str, str]]  # added nodes whose inputs the reference has: where the change starts

    @property
    def size(self) -> int:
        return len(self.added) + len(self.removed)


def compare(deployed: Structure, reference: Structure) -> Difference:
    extra = deployed.counts() - reference.counts()
    missing = reference.counts() - deployed.counts()
    added, removed = _surplus(deployed.nodes, extra), _surplus(reference.nodes, missing)
    # a root: an added node all of whose inputs are values the reference also computes
    roots = [node for node in added if all(v in reference.values for v in node.inputs)]
    return Difference(*([(n.op, n.name) for n in nodes] for nodes in (added, removed, roots or added[:1])))


def _surplus(nodes: list[Node], surplus: Counter[str]) -> list[Node]:
    """The nodes of `nodes`, in order, that make up the `surplus` counts of signatures."""
    taken: Counter[str] = Counter()
    found = []
    for node in nodes:
        if taken[node.signature] < surplus[node.signature]:
            taken[node.signature] += 1
            found.append(node)
    return found


def rewritten(path: Path, level: str, scratch: Path) -> onnx.ModelProto:
    """`path` as ONNX Runtime's `level` optimiser saves it ("none": unchanged)."""
    if level == "none":
        return onnx.load(str(path))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]  # fmt: skip
    target = scratch / f"{path.stem}.{level}.onnx"
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(target))


def graph_structure(deployment: Deployment, source: nn.Module | None) -> Check:
    """The deployed file's structure vs the source's fresh export (`fresh_export`), as written or
    after ONNX Runtime's basic or extended rewrite. Fails naming the first added nodes and the
    missing ones; n/a without a source twin or a manifest that ties it to the file."""
    if source is None:
        return Check("graph-structure", "n/a", "no source twin (--twin RUN_DIR) to export again and compare the "
                     "graph with node by node")  # fmt: skip
    if deployment.manifest is None:
        return Check("graph-structure", "n/a", "unsigned: no manifest records how the file was exported from the "
                     "source, so a fresh export is no reference")  # fmt: skip
    found = structure(onnx.load(str(deployment.onnx), load_external_data=False))
    best: tuple[str, Difference] | None = None
    with tempfile.TemporaryDirectory(prefix="harden-structure-") as tmp:
        scratch = Path(tmp)
        reference = fresh_export(source, deployment, scratch)
        for level in REWRITES:
            difference = compare(found, structure(rewritten(reference, level, scratch)))
            if difference.size == 0:
                how = "as exported" if level == "none" else f"as ONNX Runtime's {level} optimiser rewrites it"
                return Check("graph-structure", "pass", f"the deployed graph is node for node the source's fresh "
                             f"export {how} ({len(found.nodes)} nodes and outputs; names ignored)")  # fmt: skip
            if best is None or difference.size < best[1].size:
                best = (level, difference)
    assert best is not None
    level, difference = best
    return Check("graph-structure", "fail", _describe(difference, level))


def _describe(difference: Difference, level: str) -> str:
    """What differs, in a reader's words: nodes added (their roots first), nodes missing, outputs
    wired to something else."""
    added = [(op, name) for op, name in difference.added if op != OUTPUT]
    missing = [(op, name) for op, name in difference.removed if op != OUTPUT]
    rewired = sorted({name for op, name in difference.added if op == OUTPUT})
    roots = [(op, name) for op, name in difference.roots if op != OUTPUT] or added
    parts = []
    if added:
        parts.append(f"{len(added)} nodes not in a fresh export (first: "
                     + ", ".join(f"{op} '{name}'" for op, name in roots[:5]) + ")")  # fmt: skip
    if missing:
        parts.append(f"{len(missing)} of the export's nodes missing ("
                     + ", ".join(f"{op} '{name}'" for op, name in missing[:3]) + ")")  # fmt: skip
    if rewired:
        parts.append("output " + ", ".join(f"'{name}'" for name in rewired) + " computed by other nodes")
    closest = "as exported" if level == "none" else f"after ONNX Runtime's {level} optimiser"
    return (f"the deployed graph is not the source's export: {'; '.join(parts)} (closest: the fresh export "
            f"{closest}) — a node was added, removed or rewired after export")  # fmt: skip


# Fresh exports kept for the life of the process, by what determines them: verify runs several
# times on one checkpoint in a test session or a notebook, and an export takes seconds.
_FRESH: dict[tuple[object, ...], bytes] = {}


def export_size(manifest: ExportManifest) -> tuple[int, int]:
    """The size the export traced at: a static input's own (H, W), else the recorded option or
    calibration size, else any (dynamic graphs do not depend on it)."""
    for dims in manifest.inputs.values():
        if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int):
            return dims[2], dims[3]
    recipe = manifest.calibration()
    return manifest.options.image_size or (recipe.image_size if recipe else (64, 64))


def fresh_export(source: nn.Module, deployment: Deployment, scratch: Path) -> Path:
    """The source exported again as `harden export` did (fp32, then the deployed precision with
    the recorded settings), written under `scratch`."""
    from harden.export.onnx_export import export_onnx
    from harden.export.precision import to_fp16, to_int8

    manifest = deployment.manifest
    assert manifest is not None, "a signed deployment"
    record = manifest.record(deployment.onnx.name)
    recipe = record.calibration if record else None
    size = export_size(manifest)
    rad, weights = (recipe.rad, recipe.weights) if recipe else (has_rad(source), "reduced")
    key = (manifest.checkpoint_sha256, deployment.precision, size, rad, weights)
    target = scratch / f"fresh.{deployment.precision}.onnx"
    if key in _FRESH:
        target.write_bytes(_FRESH[key])
        return target
    model = source if next(source.parameters()).device.type == "cpu" else copy.deepcopy(source).cpu()
    fp32 = scratch / "fresh.fp32.onnx"
    export_onnx(model.eval(), fp32, size)
    if deployment.precision == "fp32":
        target = fp32
    elif deployment.precision == "fp16":
        to_fp16(fp32, target)
    else:  # one calibration image: the Q/DQ structure does not depend on the ranges it measures
        image = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
        to_int8(fp32, target, iter([image]), rad, weights)
    _FRESH[key] = target.read_bytes()
    return target
