"""The `harden` ONNX domain: MAS and RAD as custom nodes with standard-op function bodies.

Each PyTorch custom op becomes ONE bare node of the `harden` domain (docs/design.md §4):

    harden::Mas(logits)                 attributes threshold, plugin_namespace, plugin_version
    harden::MaskedMas(logits, mask)     the same with a boolean keep-mask (Swin's shifted windows)
    harden::Rad(attention, seed)        attributes counter, p, plugin_namespace, plugin_version
    harden::RobustAttention(q, k, v, seed)   attributes scale, threshold, counter, p, plugin_*:
                                        RAD(MAS(scale·q·kᵀ))·v in one node, which only the engine
                                        builder writes (`harden.export.fuse_attention`): its body
                                        calls Mas and Rad, its TensorRT plugin is the fused
                                        Triton kernel

The op types are not builtin names, so TensorRT's parser falls through to our plugins (its
fallback importer reads `plugin_namespace`/`plugin_version`), and every node has a function
body made of standard ops attached to the model, so any ONNX Runtime runs it with no extra
library. Masked MAS is its own op because a function body cannot branch on whether an optional
input is present.

The bodies compute exactly what `harden.ram.ops` computes:
- Mas: softmax(k·softsign(A)) with k = ½·log((N−1)·T/(1−T)), N = keys per row read from the
  shape at run time (spatial-reduction attention has fewer keys than queries). k is computed in
  float64 and rounded once, as PyTorch rounds the Python float it multiplies by.
- Rad: the harden-rad-v1 counter hash (`harden.ram.counter_rng`) in int64 ops. The scalar key
  schedule and the per-row/per-column lanes are small (Add, Mul, Mod with fmod=0); the
  per-element work is one broadcast add, one multiply, one BitwiseAnd and one compare, then a
  Where. TensorRT has no BitwiseAnd: there the Rad plugin runs, not this body.
"""

from __future__ import annotations

from typing import Final

import onnx
from onnx import TensorProto, helper
from onnx.defs import OpSchema

from harden.ram.counter_rng import KEYS, MASK_BITS, P

DOMAIN: Final = "harden"
DOMAIN_VERSION: Final = 1
PLUGIN_NAMESPACE: Final = "harden"
PLUGIN_VERSION: Final = "1"
MAS: Final = "Mas"
MASKED_MAS: Final = "MaskedMas"
RAD: Final = "Rad"
ROBUST_ATTENTION: Final = "RobustAttention"
OP_TYPES: Final = (MAS, MASKED_MAS, RAD, ROBUST_ATTENTION)


def plugin_attributes() -> dict[str, str]:
    """The attributes TensorRT's plugin fallback importer reads on every harden node."""
    return {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}


# --------------------------------------------------------------------------------------------
# Schemas: the exporter builds nodes through onnxscript, which refuses ops without one, and the
# checker and shape inference use them (output type and shape = the first input's).


def _schema(
    name: str, doc: str, inputs: list[OpSchema.FormalParameter], attributes: list[OpSchema.Attribute]
) -> OpSchema:
    plugin = [
        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False),
        OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
    ]
    return OpSchema(
        name,
        DOMAIN,
        DOMAIN_VERSION,
        doc,
        inputs=inputs,
        outputs=[OpSchema.FormalParameter("output", "T", "same shape and type as the first input")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "attention"),
            ("B", ["tensor(bool)"], "keep-mask"),
            ("I", ["tensor(int64)"], "seed"),
        ],
        attributes=attributes + plugin,
    )


def _float_attr(name: str, doc: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, OpSchema.AttrType.FLOAT, doc, required=True)


SCHEMAS: Final = (
    _schema(
        MAS,
        "Max Attention Suppression: softmax(k·softsign(A)), every weight ≤ threshold.",
        [OpSchema.FormalParameter("logits", "T")],
        [_float_attr("threshold", "T in (1/N, 1)")],
    ),
    _schema(
        MASKED_MAS,
        "Max Attention Suppression with a keep-mask; N counts each row's allowed keys.",
        [OpSchema.FormalParameter("logits", "T"), OpSchema.FormalParameter("mask", "B")],
        [_float_attr("threshold", "T in (1/N, 1)")],
    ),
    _schema(
        RAD,
        "Random Attention Dropout with the harden-rad-v1 counter hash of (seed, counter, position).",
        [OpSchema.FormalParameter("attention", "T"), OpSchema.FormalParameter("seed", "I", "0-d int64")],
        [
            OpSchema.Attribute("counter", OpSchema.AttrType.INT, "RAD call index", required=True),
            _float_attr("p", "drop probability in [0, 1)"),
        ],
    ),
    _schema(
        ROBUST_ATTENTION,
        "RAD(MAS(scale·q·kᵀ))·v: q (B, H, Nq, d), k and v (B, H, Nk, d), output (B, H, Nq, d).",
        [
            OpSchema.FormalParameter("q", "T"),
            OpSchema.FormalParameter("k", "T"),
            OpSchema.FormalParameter("v", "T"),
            OpSchema.FormalParameter("seed", "I", "0-d int64"),
        ],
        [
            _float_attr("scale", "logit scale"),
            _float_attr("threshold", "MAS's T in (1/Nk, 1)"),
            OpSchema.Attribute("counter", OpSchema.AttrType.INT, "RAD call index", required=True),
            _float_attr("p", "drop probability in [0, 1)"),
        ],
    ),
)


def register_schemas() -> None:
    """Make the harden ops known to onnx (idempotent: onnx refuses a second registration)."""
    for schema in SCHEMAS:
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)


# --------------------------------------------------------------------------------------------
# Function bodies. Built node by node with onnx.helper so that each line is one ONNX op; `_Body`
# names intermediate values and keeps the list in order.


class _Body:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def __call__(self, op_type: str, *inputs: str, **attributes: object) -> str:
        self._count += 1
        output = f"_{op_type.lower()}{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))  # type: ignore[arg-type]
        return output

    def int64(self, value: int) -> str:
        return self("Constant", value=helper.make_tensor("v", TensorProto.INT64, [], [value]))

    def int64_vector(self, values: list[int]) -> str:
        return self("Constant", value=helper.make_tensor("v", TensorProto.INT64, [len(values)], values))

    def double(self, value: float) -> str:
        return self("Constant", value=helper.make_tensor("v", TensorProto.DOUBLE, [], [value]))

    def attribute(self, name: str, kind: str, cast_to: int | None = None) -> str:
        """A scalar tensor holding the node attribute `name` (Constant with a ref_attr_name)."""
        node = helper.make_node("Constant", [], [f"_attr_{name}"])
        reference = onnx.AttributeProto(name=f"value_{kind}", ref_attr_name=name)
        reference.type = onnx.AttributeProto.FLOAT if kind == "float" else onnx.AttributeProto.INT
        node.attribute.append(reference)
        self.nodes.append(node)
        return self("Cast", node.output[0], to=cast_to) if cast_to is not None else node.output[0]

    def last_axis_size(self, tensor: str) -> str:
        return self("Shape", tensor, start=-1)  # (1,) int64


def _mas_body(masked: bool) -> onnx.FunctionProto:
    b = _Body()
    logits = "logits"
    threshold = b.attribute("threshold", "float", cast_to=TensorProto.DOUBLE)
    one = b.double(1.0)
    ratio = b("Div", threshold, b("Sub", one, threshold))  # T / (1 − T), float64
    if masked:
        mask = b("Expand", "mask", b("Shape", logits))
        keys = b("ReduceSum", b("Cast", mask, to=TensorProto.DOUBLE), b.int64_vector([-1]), keepdims=1)  # (..., Nq, 1)
        # A row with N ≤ 1/T cannot be bounded: gain clamped to 0 (uniform over its keys), as in torch.
        ratio = b("Max", b("Mul", b("Sub", keys, one), ratio), one)
    else:
        keys = b("Cast", b.last_axis_size(logits), to=TensorProto.DOUBLE)
        ratio = b("Mul", b("Sub", keys, one), ratio)
    gain = b("Mul", b("Log", ratio), b.double(0.5))
    gain = b("CastLike", gain, logits)  # one rounding to the attention's type, as PyTorch rounds it
    scaled = b("Mul", b("Softsign", logits), gain)
    if masked:
        minus_inf = b("CastLike", b.double(float("-inf")), logits)
        scaled = b("Where", mask, scaled, minus_inf)
    b.nodes.append(helper.make_node("Softmax", [scaled], ["output"], axis=-1))
    return helper.make_function(
        DOMAIN,
        MASKED_MAS if masked else MAS,
        ["logits", "mask"] if masked else ["logits"],
        ["output"],
        b.nodes,
        opset_imports=[],  # filled by `functions_for` with the model's opset
        attributes=["threshold", "plugin_namespace", "plugin_version"],
    )


def _rad_body() -> onnx.FunctionProto:
    b = _Body()
    prime = b.int64(P)

    def mod_p(x: str) -> str:
        return b("Mod", x, prime, fmod=0)  # non-negative remainder, as the spec's `mod`

    def mix(x: str, key: str) -> str:  # ((x + k) mod P)² mod P
        y = mod_p(b("Add", x, key))
        return mod_p(b("Mul", y, y))

    def lane(index: str, key: str, k1: int, k2: int) -> str:  # `_lane_numpy` of counter_rng
        x = mod_p(b("Add", index, b("Add", key, b.int64(k1))))
        x = mod_p(b("Add", b("Mul", x, x), b.int64(k2)))
        x = mod_p(b("Mul", x, x))
        return b("Mod", x, b.int64(2**30), fmod=0)

    # Key schedule on scalars.
    key = [b.int64(k) for k in KEYS[:5]]
    counter = b.attribute("counter", "int")
    s = mod_p("seed")
    kr = mix(mix(b("Add", mix(s, key[0]), counter), key[1]), key[2])
    kc = mix(mix(kr, key[3]), key[4])

    # The attention as a (rows, cols) matrix; one hash per row and per column.
    shape = b("Shape", "attention")
    cols = b("Shape", "attention", start=-1)
    rows = b("ReduceProd", b("Shape", "attention", end=-1), keepdims=1)
    zero, one = b.int64(0), b.int64(1)
    row_hash = lane(b("Range", zero, b("Squeeze", rows), one), kr, KEYS[5], KEYS[6])
    col_hash = lane(b("Range", zero, b("Squeeze", cols), one), kc, KEYS[7], KEYS[8])

    # Per element: x = hr + hc, keep iff bits 0..43 of x² ≥ θ·2²⁰ (⇔ bits 20..43 of x² ≥ θ).
    # BitwiseAnd, not Mod: ONNX Runtime's int64 Mod is ~7× slower than Add+Mul together
    # (bench/ort_latency.py); TensorRT, which lacks BitwiseAnd, runs the Rad plugin instead.
    column, row = b("Unsqueeze", row_hash, b.int64_vector([1])), b("Unsqueeze", col_hash, b.int64_vector([0]))
    x = b("Add", column, row)  # (rows, cols)
    low_bits = b("BitwiseAnd", b("Mul", x, x), b.int64(2 ** (20 + MASK_BITS) - 1))
    p = b.attribute("p", "float")  # float32, as `drop_threshold` rounds p
    theta = b("Cast", b("Floor", b("Mul", b("Cast", p, to=TensorProto.DOUBLE), b.double(2.0**MASK_BITS))), to=7)
    keep = b("GreaterOrEqual", low_bits, b("Mul", theta, b.int64(2**20)))
    keep = b("Reshape", keep, shape)

    # Kept weights scaled by float32(2²⁴ / (2²⁴ − θ)) (`keep_scale`), dropped ones 0. For finite
    # M ≥ 0, Where(keep, M·s, 0) equals PyTorch's M·keep·s bit for bit, in one pass fewer.
    full = b.double(2.0**MASK_BITS)
    scale = b("Div", full, b("Sub", full, b("Cast", theta, to=TensorProto.DOUBLE)))
    scale = b("CastLike", b("Cast", scale, to=TensorProto.FLOAT), "attention")
    scaled = b("Mul", "attention", scale)
    dropped = b("CastLike", b.double(0.0), "attention")
    b.nodes.append(helper.make_node("Where", [keep, scaled, dropped], ["output"]))
    return helper.make_function(
        DOMAIN,
        RAD,
        ["attention", "seed"],
        ["output"],
        b.nodes,
        opset_imports=[],
        attributes=["counter", "p", "plugin_namespace", "plugin_version"],
    )


def _robust_attention_body() -> onnx.FunctionProto:
    b = _Body()
    scale = b("CastLike", b.attribute("scale", "float"), "q")
    logits = b("MatMul", b("Mul", "q", scale), b("Transpose", "k", perm=[0, 1, 3, 2]))  # (B, H, Nq, Nk)
    mas = helper.make_node(MAS, [logits], ["_mas"], domain=DOMAIN)
    rad = helper.make_node(RAD, ["_mas", "seed"], ["_rad"], domain=DOMAIN)
    for node, names in ((mas, ["threshold"]), (rad, ["counter", "p"])):
        for name in [*names, "plugin_namespace", "plugin_version"]:
            kind = onnx.AttributeProto.INT if name == "counter" else onnx.AttributeProto.FLOAT
            kind = onnx.AttributeProto.STRING if name.startswith("plugin_") else kind
            node.attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name, type=kind))
    b.nodes += [mas, rad, helper.make_node("MatMul", ["_rad", "v"], ["output"])]
    return helper.make_function(
        DOMAIN,
        ROBUST_ATTENTION,
        ["q", "k", "v", "seed"],
        ["output"],
        b.nodes,
        opset_imports=[helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        attributes=["scale", "threshold", "counter", "p", "plugin_namespace", "plugin_version"],
    )


def function_body(op_type: str) -> onnx.FunctionProto:
    """harden's own function body of `op_type` (no opset import yet): what every export writes,
    and what `harden.runtime.inlined` recognises once an optimiser has inlined it."""
    bodies = {
        MAS: lambda: _mas_body(False),
        MASKED_MAS: lambda: _mas_body(True),
        RAD: _rad_body,
        ROBUST_ATTENTION: _robust_attention_body,
    }
    return bodies[op_type]()


def functions_for(model: onnx.ModelProto) -> list[onnx.FunctionProto]:
    """The function bodies of the harden ops `model` uses, importing the model's own opset.

    The function's default-domain opset must equal the model's or the checker refuses the model.
    RobustAttention's body calls Mas and Rad, so it brings theirs.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    used = {n.op_type for n in _all_nodes(model.graph) if n.domain == DOMAIN}
    if ROBUST_ATTENTION in used:
        used |= {MAS, RAD}
    functions = []
    for op_type in OP_TYPES:
        if op_type in used:
            function = function_body(op_type)
            function.opset_import.append(helper.make_opsetid("", opset))
            functions.append(function)
    return functions


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attribute.g))
    return nodes
