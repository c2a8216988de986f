"""The deployment under test and its twins, loaded only after their hashes check out.

- `Deployment`: an export directory (`harden export`), its manifest, the deployed artefact (an
  engine if one was built, else the ONNX variant of the exported precision) and the ONNX file
  that artefact came from. Every file's sha256 is checked against the manifest first.
- Twins (DESIGN.md §5): "graph" is the deployed ONNX file interpreted by `GraphTwin` — with the
  deployed precision, so for fp16/int8 it is the precision twin; a run directory is the source
  twin, refused unless its checkpoint is the one the manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from harden.errors import InputError
from harden.export.manifest import MANIFEST_FILE, read_manifest, sha256_file, verify_files
from harden.runtime.graph_twin import GraphTwin
from harden.training.checkpoint import MODEL_FILE

GRAPH = "graph"


@dataclass
class Deployment:
    root: Path
    manifest: dict[str, Any]
    artefact: Path  # what runs in production: an engine, or an ONNX file
    onnx: Path  # the ONNX file the artefact is (or was built from)
    precision: str

    @property
    def reference_onnx(self) -> Path:
        return self.root / "model.fp32.onnx"


def open_deployment(path: Path, artefact: str | None = None) -> Deployment:
    """An export directory (or a file inside one), hash-checked against its manifest.

    artefact: a file name in the directory to verify instead of the default choice.
    """
    path = Path(path)
    if path.is_file():
        path, artefact = path.parent, artefact or path.name
    if not (path / MANIFEST_FILE).is_file():
        raise InputError(
            f"{path} is not a harden export (no {MANIFEST_FILE}); verification needs the manifest to know "
            "what was exported — run `harden export RUN_DIR --out DIR` first"
        )
    manifest = read_manifest(path)
    verify_files(path, manifest)
    onnx_files = {e["path"]: e["precision"] for e in manifest.get("onnx", [])}
    engines = {e["path"]: e["precision"] for e in manifest.get("engines", [])}
    if artefact is None:
        precision = manifest.get("precision", "fp32")
        artefact = next(iter(engines), None) or f"model.{precision}.onnx"
    if artefact not in onnx_files and artefact not in engines:
        listed = ", ".join([*onnx_files, *engines]) or "nothing"
        raise InputError(f"{artefact} is not listed in {path / MANIFEST_FILE} (it lists {listed})")
    precision = onnx_files.get(artefact) or engines[artefact]
    source_onnx = artefact if artefact in onnx_files else f"model.{precision}.onnx"
    if source_onnx not in onnx_files:
        raise InputError(f"{path}: the engine {artefact} has no {source_onnx} to build a graph twin from")
    if "model.fp32.onnx" not in onnx_files:
        raise InputError(f"{path}: model.fp32.onnx, the reference graph, is missing from the manifest")
    return Deployment(path, manifest, path / artefact, path / source_onnx, precision)


def source_twin(run_dir: Path, deployment: Deployment) -> nn.Module:
    """The trained model of `run_dir`, refused unless it is the checkpoint that was exported."""
    from harden.training import load_model

    checkpoint = Path(run_dir) / MODEL_FILE
    if not checkpoint.is_file():
        raise InputError(f"{run_dir} is not a training run (no {MODEL_FILE}); pass the run that was exported")
    recorded = deployment.manifest.get("checkpoint", {}).get("sha256")
    if sha256_file(checkpoint) != recorded:
        raise InputError(
            f"{checkpoint} is not the checkpoint {deployment.root} was exported from (sha256 differs from the "
            "manifest): a twin must be the deployed model's source. Pass the exported run, or export this one."
        )
    model, _ = load_model(run_dir)
    return model.eval()


def load_twins(specs: list[str], deployment: Deployment) -> dict[str, nn.Module]:
    """ "graph" and run directories → named twins (names: "graph", "source")."""
    if not specs:
        raise InputError("no twin: pass --twin graph and/or --twin RUN_DIR")
    twins: dict[str, nn.Module] = {}
    for spec in specs:
        if spec == GRAPH:
            twins[GRAPH] = GraphTwin.from_file(deployment.onnx).eval()
        else:
            twins["source"] = source_twin(Path(spec), deployment)
    return twins


def reference_model(twins: dict[str, nn.Module], deployment: Deployment) -> nn.Module:
    """The float32 model the deployment should compute: the source twin if given, else the
    exported fp32 graph."""
    if "source" in twins:
        return twins["source"]
    if deployment.precision == "fp32" and GRAPH in twins:
        return twins[GRAPH]
    return GraphTwin.from_file(deployment.reference_onnx).eval()
