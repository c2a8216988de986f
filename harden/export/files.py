"""The bytes behind an export: hashes, the versions that made them, and ONNX files read safely."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import onnx

from harden import DISTRIBUTION
from harden.errors import InputError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    """Versions of everything that shaped the exported files (None: not installed)."""
    found: dict[str, str | None] = {}
    for package in ("harden", "torch", "onnx", "onnxscript", "onnxruntime", "polygraphy", "tensorrt"):
        try:
            found[package] = importlib.metadata.version(DISTRIBUTION if package == "harden" else package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file whose external data, if any, stays inside the file's directory.

    ONNX external data is a path written in the file; a crafted path (`../../etc/...` or an
    absolute one) would make the loader read any file the process can read.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError, and OSError
        raise InputError(f"{path}: not a readable ONNX file ({err})") from err
    root = path.parent.resolve()
    for tensor in _tensors_with_external_data(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise InputError(
                f"{path}: tensor {tensor.name!r} stores its data at {location!r}, outside {root}; "
                "refused (external data must sit beside the ONNX file)"
            )
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
    if any(True for _ in _tensors_with_external_data(model)):
        try:
            onnx.load_external_data_for_model(model, str(root))
        except Exception as err:  # a truncated data file: onnx raises ValueError, OSError or its own errors
            raise InputError(f"{path}: its external data cannot be read ({err}); re-export or restore it") from err
    return model


def _tensors_with_external_data(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import uses_external_data

    return [t for t in _all_tensors(model.graph) if uses_external_data(t)]


def _all_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and tensor attributes of `graph` and its subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                tensors.append(attribute.t)
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                tensors.extend(_all_tensors(subgraph))
    return tensors
