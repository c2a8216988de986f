"""`manifest.json`: what an export directory holds, so verification can trust what it loads.

The manifest records the sha256 of the checkpoint, every ONNX file and every engine, the
versions that produced them, the opset, precision, RAM settings, input shapes, export options
and parity results. `verify_files` recomputes the hashes: a twin or engine whose file does not
match its manifest is refused, because it is not what was exported and checked.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Final

import onnx

from harden import DISTRIBUTION
from harden.errors import InputError

MANIFEST_FILE: Final = "manifest.json"
FORMAT: Final = "harden-export-manifest-v1"


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


def file_entry(path: Path, root: Path, **extra: Any) -> dict[str, Any]:
    """A manifest entry for a file under `root`: relative path, size, sha256, and `extra`."""
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        hint = "run `harden export RUN_DIR --out DIR`"
        raise InputError(f"{export_dir} is not a harden export (no {MANIFEST_FILE}); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); export again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} manifest; export again with this harden")
    return manifest


def verify_files(export_dir: Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """Recompute every recorded hash under `export_dir`; returns the files checked.

    Raises InputError naming the first file that is missing or changed since export.
    """
    manifest = manifest or read_manifest(export_dir)
    checked = []
    for entry in [*manifest.get("onnx", []), *manifest.get("engines", [])]:
        path = Path(export_dir) / entry["path"]
        if not path.is_file():
            raise InputError(f"{path} is listed in the manifest but missing; export again")
        if sha256_file(path) != entry["sha256"]:
            raise InputError(
                f"{path} does not match the sha256 in {MANIFEST_FILE}: it changed since export; "
                "it is not the model that was checked, so it is refused. Export again."
            )
        checked.append(entry["path"])
    return checked


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
        onnx.load_external_data_for_model(model, str(root))
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
