"""PyTorch → ONNX: the dynamo exporter, MAS/RAD as `harden` nodes, checked before anything is kept.

The exported graph takes `image` (float32, (B, 3, H, W) in [0, 1], every dimension dynamic)
and, when the model has RAD, `rad_seed` (0-d int64): deployment feeds a fresh seed per frame,
validation fixed ones, and the same seed gives the same output as the PyTorch model under
`fixed_rad_seed`. It returns `logits` (B, K, H, W).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import onnx
import onnxscript
import torch
from torch import nn

from harden._io import atomic_path
from harden.errors import InputError
from harden.export import onnx_ops
from harden.export.onnx_ops import functions_for, plugin_attributes, register_schemas
from harden.ram import has_rad, robust_cores, set_rad_seed

OPSET: Final = 18  # what torch 2.13's dynamo exporter targets natively; TensorRT ≥ 10 parses it
STACK_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata torch's exporter writes
IR_VERSION: Final = 10  # opset 18's IR; ONNX Runtime 1.31 rejects onnx.helper's newer default
IMAGE: Final = "image"
RAD_SEED: Final = "rad_seed"
LOGITS: Final = "logits"


class _WithSeed(nn.Module):
    """The model with RAD's seed as a second input, so the exporter makes it a graph input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, rad_seed: torch.Tensor) -> torch.Tensor:
        set_rad_seed(self.model, rad_seed)
        return self.model(image)


_harden = onnxscript.values.Opset(onnx_ops.DOMAIN, onnx_ops.DOMAIN_VERSION)


def _mas(logits: Any, threshold: float, mask: Any = None) -> Any:
    if mask is None:
        return getattr(_harden, onnx_ops.MAS)(logits, threshold=threshold, **plugin_attributes())
    return getattr(_harden, onnx_ops.MASKED_MAS)(logits, mask, threshold=threshold, **plugin_attributes())


def _rad(attention: Any, seed: Any, counter: int, p: float) -> Any:
    return getattr(_harden, onnx_ops.RAD)(attention, seed, counter=counter, p=p, **plugin_attributes())


def harden_translations() -> dict[Any, Any]:
    """The exporter's custom translation table: each harden op → one bare `harden` node."""
    register_schemas()
    return {torch.ops.harden.mas.default: _mas, torch.ops.harden.rad.default: _rad}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    inputs: dict[str, list[int | str]]  # name → shape, symbolic dims as names
    outputs: dict[str, list[int | str]]
    harden_nodes: dict[str, int]  # op type → count
    opset: int
    ir_version: int


def export_onnx(model: nn.Module, path: Path, image_size: tuple[int, int] = (64, 64)) -> ExportResult:
    """Export `model` (a harden model, RAM inserted or not) to `path` and check the file.

    Args:
        model: in eval mode; it is not modified (RAD's seed setting is restored).
        path: the .onnx file, written atomically (a single file: no external data).
        image_size: (H, W) of the tracing example. Batch, height and width are dynamic unless
            the model says why its graph must fix them (`export_static_size`): then H, W are
            this size.
    """
    register_schemas()
    with_rad = has_rad(model)
    image = torch.rand(2, 3, *image_size)
    dynamic = torch.export.Dim.DYNAMIC
    image_dims: dict[int, Any] = {0: dynamic}
    if getattr(model, "export_static_size", None) is None:
        image_dims.update({2: dynamic, 3: dynamic})
    if with_rad:
        module: nn.Module = _WithSeed(model)
        args: tuple[torch.Tensor, ...] = (image, torch.tensor(0, dtype=torch.int64))
        dynamic_shapes: Any = {IMAGE: image_dims, RAD_SEED: None}
        input_names = [IMAGE, RAD_SEED]
    else:
        module, args, dynamic_shapes, input_names = model, (image,), {"x": image_dims}, [IMAGE]
    previous = [core.seeds.fixed for _, core in robust_cores(model)]
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed": we never use its ops
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's progress chatter
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=OPSET,
                input_names=input_names,
                output_names=[LOGITS],
                dynamic_shapes=dynamic_shapes if with_rad else [image_dims],
                custom_translation_table=harden_translations(),
                optimize=True,
                verbose=False,
            )
    finally:
        registry_log.setLevel(registry_level)
        for (_, core), seed in zip(robust_cores(model), previous, strict=True):
            core.seeds.fixed = seed
    assert program is not None
    proto = program.model_proto
    _name_dimensions(proto, ["batch", None, "height", "width"])
    _drop_stack_traces(proto.graph)
    finish_model(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        check_onnx(tmp)
    return describe(proto, path)


def _name_dimensions(proto: onnx.ModelProto, names: list[str | None]) -> None:
    """Give the exporter's symbolic dims of `image` (s40, s73, ...) readable names everywhere."""
    image = next(v for v in proto.graph.input if v.name == IMAGE)
    dims = zip(image.type.tensor_type.shape.dim, names, strict=True)
    renames = {d.dim_param: name for d, name in dims if d.dim_param and name}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


def _drop_stack_traces(graph: onnx.GraphProto) -> None:
    """Remove the exporter's per-node Python stack traces: they hold the absolute paths of the
    source files that traced the model, so the same checkpoint exported from another checkout,
    virtual environment or machine would get other bytes and another sha256."""
    for node in graph.node:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                _drop_stack_traces(subgraph)


def finish_model(proto: onnx.ModelProto) -> None:
    """Attach the harden function bodies, declare the domain, pin the IR version."""
    register_schemas()
    del proto.functions[:]
    proto.functions.extend(functions_for(proto))
    domains = {o.domain for o in proto.opset_import}
    if proto.functions and onnx_ops.DOMAIN not in domains:
        proto.opset_import.append(onnx.helper.make_opsetid(onnx_ops.DOMAIN, onnx_ops.DOMAIN_VERSION))
    proto.ir_version = IR_VERSION
    proto.producer_name = "harden"


def check_onnx(path: Path) -> None:
    """onnx's full checker and strict shape inference; an InputError says what is wrong."""
    register_schemas()
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".shapes", strict_mode=True, check_type=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise InputError(f"{path}: the ONNX model does not pass onnx's checker: {err}") from err
    finally:
        Path(str(path) + ".shapes").unlink(missing_ok=True)


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


def describe(proto: onnx.ModelProto, path: Path) -> ExportResult:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.domain == onnx_ops.DOMAIN:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ExportResult(
        path=path,
        inputs={v.name: _shape(v) for v in proto.graph.input},
        outputs={v.name: _shape(v) for v in proto.graph.output},
        harden_nodes=counts,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        ir_version=proto.ir_version,
    )
