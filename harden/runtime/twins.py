"""The deployment under test and its twins, loaded only after their hashes check out.

- `Deployment`: an export directory (`harden export`), its manifest, the deployed artefact (an
  engine if one was built, else the ONNX variant of the exported precision) and the ONNX file
  that artefact came from. Every file's sha256 is checked against the manifest first. Or a bare
  ONNX file from any toolchain (unsigned): its interface is found or stated by the user.
- Twins (docs/design.md §5): "graph" is the deployed ONNX file interpreted by `GraphTwin` — with the
  deployed precision, so for fp16/int8 it is the precision twin; a run directory is the source
  twin, refused unless its checkpoint is the one the manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from harden.errors import InputError
from harden.export.files import load_onnx, sha256_file
from harden.export.manifest import MANIFEST_FILE, ExportManifest, verify_files
from harden.run import MODEL_FILE
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.interface import ModelInterface, find_interface, fixed_image_size, output_classes

GRAPH = "graph"


@dataclass
class Deployment:
    """What verify judges. Signed: a harden export directory whose manifest records every file's
    hash, the checkpoint, precision and calibration. Unsigned: a bare ONNX file from any exporter,
    with only what the user states (interface, reference file); audits that need a manifest are n/a.

    root: the export directory, or the bare file's directory (the default report goes there).
    manifest: the export manifest (None when unsigned).
    artefact: what runs in production: an engine, or an ONNX file.
    onnx: the ONNX file the artefact is (or was built from).
    interface: how the file is fed and read (`harden.runtime.interface`).
    reference_file: the float32 graph the deployment should compute (the export's model.fp32.onnx,
        or --reference), or None when there is none.
    num_classes: from the manifest or the output's shape (None: not static; the data says).
    """

    root: Path
    manifest: ExportManifest | None
    artefact: Path
    onnx: Path
    precision: str
    interface: ModelInterface = field(default_factory=ModelInterface)
    reference_file: Path | None = None
    num_classes: int | None = None
    image_size: tuple[int, int] | None = None  # the ONNX input's static size (H, W), if static

    @property
    def signed(self) -> bool:
        return self.manifest is not None

    @property
    def reference_onnx(self) -> Path:
        if self.reference_file is None:
            raise InputError(f"{self.artefact.name}: there is no float32 reference file (pass --reference FILE.onnx)")
        return self.reference_file

    def file_hashes(self) -> dict[str, str]:
        """sha256 per file name: the manifest's when signed, computed now when not."""
        if self.manifest is not None:
            return self.manifest.hashes()
        files = [self.artefact, *([self.reference_file] if self.reference_file else [])]
        return {f.name: sha256_file(f) for f in files}


def open_deployment(
    path: Path, artefact: str | None = None, *, interface: InterfaceOptions | None = None,
    reference: Path | None = None,
) -> Deployment:  # fmt: skip
    """An export directory (or a file inside one), hash-checked against its manifest; or a bare
    ONNX file without one (unsigned), read with `interface`'s options.

    artefact: a file name in the directory to verify instead of the default choice.
    reference: the float32 ONNX file an unsigned deployment should compute (before quantisation
        or optimisation).
    """
    path = Path(path)
    options = interface or InterfaceOptions()
    if path.is_file() and not (path.parent / MANIFEST_FILE).is_file():
        return _unsigned(path, options, reference)
    if path.is_file():
        path, artefact = path.parent, artefact or path.name
    if not path.exists():
        raise InputError(f"{path} does not exist: pass an export directory or an ONNX file")
    if not (path / MANIFEST_FILE).is_file():
        raise InputError(
            f"{path} is not a harden export (no {MANIFEST_FILE}): pass the ONNX file itself to verify it unsigned "
            "(harden verify FILE.onnx), or export a harden run with `harden export RUN_DIR --out DIR`"
        )
    if not options.is_default() or reference is not None:
        raise InputError(
            f"{path} is a harden export: its manifest says how it is fed and what it is compared with; "
            "--input/--output/--pixel-range/--mean/--std/--reference are for files without one"
        )
    manifest = ExportManifest.read(path)
    verify_files(path, manifest)
    onnx_files = {f.path: f.precision for f in manifest.onnx}
    engines = {f.path: f.precision for f in manifest.engines}
    if artefact is None:
        precision = manifest.precision
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
    model = load_onnx(path / source_onnx)
    found = find_interface(model)
    return Deployment(path, manifest, path / artefact, path / source_onnx, precision, found,
                      path / "model.fp32.onnx", manifest.num_classes, fixed_image_size(model, found))  # fmt: skip


@dataclass(frozen=True)
class InterfaceOptions:
    """What the user states about a bare file (CLI: --input, --output, --pixel-range, --mean, --std)."""

    input: str | None = None
    output: str | None = None
    pixel_range: float = 1.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def is_default(self) -> bool:
        return self == InterfaceOptions()


def _unsigned(path: Path, options: InterfaceOptions, reference: Path | None) -> Deployment:
    if path.suffix != ".onnx":
        raise InputError(
            f"{path}: a file without a manifest must be an ONNX model (.onnx); an engine needs the harden export "
            "it was built in, or verify the ONNX file it was built from"
        )
    model = load_onnx(path)
    interface = find_interface(model, options.input, options.output, options.pixel_range, options.mean, options.std)
    if reference is not None:
        reference = Path(reference)
        if reference.suffix != ".onnx" or not reference.is_file():
            raise InputError(f"--reference {reference}: expected the float32 ONNX file the deployment came from")
        reference_graph = load_onnx(reference)  # refused now, with a message, if unreadable or ambiguous
        find_interface(reference_graph, *_names_in(reference_graph, interface), options.pixel_range, options.mean,
                       options.std)  # fmt: skip
    precision = detect_precision(model)
    if reference is None and precision == "fp32":
        reference = path  # an fp32 file is its own float32 graph
    return Deployment(path.parent, None, path, path, precision, interface, reference, output_classes(model, interface),
                      fixed_image_size(model, interface))  # fmt: skip


def _names_in(model: onnx.ModelProto, interface: ModelInterface) -> tuple[str | None, str | None]:
    """The deployed file's input and output names where the reference file has them too."""
    inputs, outputs = {i.name for i in model.graph.input}, {o.name for o in model.graph.output}
    return (interface.input if interface.input in inputs else None,
            interface.output if interface.output in outputs else None)  # fmt: skip


def reference_interface(deployment: Deployment) -> ModelInterface:
    """The interface of the reference file: the deployment's names and preprocessing."""
    if deployment.reference_file is None or deployment.reference_file == deployment.onnx:
        return deployment.interface
    model = load_onnx(deployment.reference_file)
    stated = deployment.interface
    return find_interface(model, *_names_in(model, stated), stated.pixel_range, stated.mean, stated.std)


QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul"}  # fmt: skip


def detect_precision(model: onnx.ModelProto) -> str:
    """int8 when the graph quantises (Q/DQ, QOperator or dynamic), fp16 when it stores or casts to
    float16, else fp32: what sets the gates' defaults for a file without a manifest."""
    if any(n.op_type in QUANTISED_OPS for n in model.graph.node):
        return "int8"
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute) for n in model.graph.node
    ):
        return "fp16"
    return "fp32"


def source_twin(run_dir: Path, deployment: Deployment) -> nn.Module:
    """The trained model of `run_dir`, refused unless it is the checkpoint that was exported."""
    from harden.run import load_model

    checkpoint = Path(run_dir) / MODEL_FILE
    if not checkpoint.is_file():
        raise InputError(f"{run_dir} is not a training run (no {MODEL_FILE}); pass the run that was exported")
    manifest = deployment.manifest
    if manifest is not None and sha256_file(checkpoint) != manifest.checkpoint_sha256:
        raise InputError(
            f"{checkpoint} is not the checkpoint {deployment.root} was exported from (sha256 differs from the "
            "manifest): a twin must be the deployed model's source. Pass the exported run, or export this one."
        )
    model, _ = load_model(run_dir)
    return model.eval()


class UserSourceTwin(nn.Module):
    """A user's PyTorch model as the source twin of a bare ONNX file: fed and read through the
    same interface as the engine (preprocessing before, upsampling after), so both see [0, 1]
    pixels and return logits at the image size."""

    def __init__(self, model: nn.Module, interface: ModelInterface) -> None:
        super().__init__()
        self.model, self.interface = model, interface
        self.eval()  # the wrapper's mode is the model's: whoever restores a mode restores eval

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(self.interface.preprocess(images))
        logits = getattr(out, "logits", out)  # transformers returns an output object
        return self.interface.postprocess(logits, (images.shape[-2], images.shape[-1])).float()


def load_twins(specs: list[str], deployment: Deployment) -> dict[str, nn.Module]:
    """ "graph", run directories, and for a bare file hf:PATH or module:package.module:factory →
    named twins (names: "graph", "source")."""
    from harden.models.external import is_external, load_user_model

    if not specs:
        raise InputError("no twin: pass --twin graph and/or --twin RUN_DIR")
    twins: dict[str, nn.Module] = {}
    for spec in specs:
        if spec == GRAPH:
            twins[GRAPH] = GraphTwin.from_file(deployment.onnx, deployment.interface).eval()
        elif is_external(spec):
            if deployment.signed:
                raise InputError(f"--twin {spec}: a harden export's source is the run it was exported from (RUN_DIR)")
            if deployment.num_classes is None:
                raise InputError(f"--twin {spec}: {deployment.artefact.name}'s output does not state its classes")
            twins["source"] = UserSourceTwin(load_user_model(spec, deployment.num_classes), deployment.interface).eval()
        else:
            twins["source"] = source_twin(Path(spec), deployment)
    return twins


def reference_model(twins: dict[str, nn.Module], deployment: Deployment) -> nn.Module | None:
    """The float32 model the deployment should compute: the source twin if given, else the fp32
    graph (the deployed one when it is fp32); None when there is none (an unsigned quantised or
    fp16 file without --reference)."""
    if "source" in twins:
        return twins["source"]
    if deployment.precision == "fp32" and GRAPH in twins:
        return twins[GRAPH]
    if deployment.reference_file is None:
        return None
    return GraphTwin.from_file(deployment.reference_file, reference_interface(deployment)).eval()
