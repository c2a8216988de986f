"""`harden verify`: re-attack a deployed model through its twins and gate the release."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.cli._options import SIZE, data_option, progress_option
from harden.data_spec import MAX_ITERS, MAX_QUERIES

if TYPE_CHECKING:
    from harden.data import SegmentationDataset
    from harden.runtime.gates import Gates
    from harden.runtime.twins import Deployment
    from harden.runtime.verify import VerifyOptions, VerifyResult


@click.command("verify")
@click.argument("deployed", type=click.Path(path_type=Path))
@click.option(
    "--twin",
    "twin_specs",
    multiple=True,
    default=("graph",),
    show_default=True,
    metavar="graph|RUN_DIR|hf:PATH|module:M:F",
    help="Gradient-enabled twin(s) to craft attacks on: 'graph' rebuilds the deployed ONNX graph in PyTorch "
    "(with its fp16/int8 precision); a run directory is the trained checkpoint (must be the exported one). "
    "For a bare ONNX file, your trained PyTorch model: hf:PATH (a local transformers folder) or "
    "module:package.module:factory (factory(num_classes=K) returns it; importing runs your code); it is fed "
    "exactly as the file is. Repeat for several.",
)
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A bare file's float32 ONNX original (before quantisation, fp16 conversion or optimisation): "
              "the reference for survival, divergence and the weights. [default: an fp32 file is its own]")  # fmt: skip
@click.option("--input", "input_name", default=None, metavar="NAME",
              help="A bare file's image input. [default: 'image', else its only 4-D input]")  # fmt: skip
@click.option("--output", "output_name", default=None, metavar="NAME",
              help="A bare file's logits output. [default: 'logits', else its only output]")  # fmt: skip
@click.option("--pixel-range", type=click.Choice(["1", "255"]), default="1", show_default=True,
              help="What a bare file's input reads for a white pixel: [0, 1] or [0, 255] pixels.")  # fmt: skip
@click.option("--mean", "mean_spec", default=None, metavar="R,G,B",
              help="Per-channel mean subtracted before a bare file's graph (its pixel range), with --std.")  # fmt: skip
@click.option("--std", "std_spec", default=None, metavar="R,G,B", help="Per-channel std, with --mean.")
@click.option("--artefact", default=None, help="File of the export to verify. [default: the engine, else the "
              "exported precision's ONNX]")  # fmt: skip
@data_option(default=None)
@click.option("--split", default="val", show_default=True)
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True, help="Verification images.")
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@click.option("--attacks", "attack_spec", default="fgsm,pgd", show_default=True, metavar="NAME[,NAME...]",
              help="White-box attacks crafted on every twin; Square and noise always run on the engine.")  # fmt: skip
@click.option("--eps", "eps_spec", default="4/255,8/255", show_default=True, metavar="EPS[,EPS...]")
@click.option(
    "--iters", type=click.IntRange(min=1, max=MAX_ITERS), default=None, help="Iterations of the white-box attacks."
)
@click.option("--queries", type=click.IntRange(min=1, max=MAX_QUERIES), default=100, show_default=True,
              help="Square's queries.")  # fmt: skip
@click.option("--divergence-steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="Steps of the twin–engine divergence search (0 skips it).")  # fmt: skip
@click.option("--eot", type=click.IntRange(min=1), default=None, help="[default: 8 with RAD, else 1]")
@click.option("--draws", type=click.IntRange(min=1), default=None, help="RAD draws per prediction. [default: 3]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--gates", "gate_file", type=click.Path(path_type=Path), default=None,
              help="TOML or JSON file of gate values (see below).")  # fmt: skip
@click.option("--gate", "gate_pairs", multiple=True, metavar="NAME=VALUE", help="Override one gate, e.g. survival=0.9.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: DEPLOYED/verify]")  # fmt: skip
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|cuda:N",
              help="Where the twins and every attack run, and the engine's GPU: ONNX Runtime's CUDA provider "
              "(needs onnxruntime-gpu) or TensorRT on that GPU. Under torchrun, cuda is cuda:LOCAL_RANK. "
              "Attack arithmetic is float32 on every device.")  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue an interrupted run from REPORT/verify.state (saved after "
              "every batch; the same arguments are required).")  # fmt: skip
@progress_option
def verify_command(
    deployed: Path,
    twin_specs: tuple[str, ...],
    reference: Path | None,
    input_name: str | None,
    output_name: str | None,
    pixel_range: str,
    mean_spec: str | None,
    std_spec: str | None,
    artefact: str | None,
    data: str | None,
    split: str,
    images: int,
    image_size: tuple[int, int] | None,
    attack_spec: str,
    eps_spec: str,
    iters: int | None,
    queries: int,
    divergence_steps: int,
    eot: int | None,
    draws: int | None,
    seed: int,
    batch_size: int,
    gate_file: Path | None,
    gate_pairs: tuple[str, ...],
    report_dir: Path | None,
    device: str,
    resume: bool,
    progress: bool,
) -> None:
    """Does the robustness survive deployment? Verify DEPLOYED (a `harden export` directory, a file
    in one, or any segmentation model's ONNX file) against its twins, and exit 0 (all gates pass),
    1 (a gate failed) or 2 (bad input).

    In an export directory every file is hash-checked against the export manifest first. Then, on the verification
    images: parity of engine and twins on clean images; white-box attacks crafted on each twin
    (EOT over RAD seeds) and predicted by the engine over several RAD draws; Square and random
    noise run on the engine by queries; a divergence search for inputs where the engine and the
    fp32 reference disagree; deployment audits (MAS/RAD nodes, RAD seed, weights, int8
    calibration) and the sanity checks of DESIGN.md §6. The verdict is the worst case over all.

    A bare ONNX file (from any exporter, optimiser or quantiser) is verified unsigned: say how it
    is fed (--input/--output when ambiguous, --pixel-range, --mean/--std when normalisation happens
    outside the graph), give --data, and --reference its float32 original when it is quantised;
    logits at a lower resolution are upsampled to the labels. The audits that need a manifest
    are n/a and the report says the deployment is unsigned.

    \b
    Gates (defaults per precision fp32 / fp16 / int8):
      clean_agreement        0.999 / 0.99 / 0.90   engine vs twin argmax, clean images
      clean_miou_delta       0.001 / 0.01 / 0.05   |ΔmIoU| engine vs twin, clean images
      adversarial_agreement  0.99  / 0.97 / 0.85   on adversarial and divergence images
      survival               0.95                  engine robust mIoU ≥ 0.95 × twin's
      min_robust_miou        0 (off)               engine worst-case mIoU floor
    A signed export raises clean_agreement[source] to the agreement the export recorded minus 1
    point (unless --gate clean_agreement=… is given): a file worse than its own export fails.
    Fail closed: a failed audit, a failed sanity check, or no images fails. A sanity check whose
    premise the attack list leaves out (iterative>single needs fgsm) is n/a and says why.

    Writes REPORT/verify.json, REPORT/junit.xml (one test case per gate) and REPORT/report.html.
    The state is saved after every batch, so an interrupted run continues with --resume.

    Large runs shard across processes with torchrun: each rank verifies a contiguous block of
    the batches, rank 0 merges them (the result equals a one-process run) and writes the reports.

    \b
    Examples:
      harden verify exports/seg --twin graph --twin runs/seg
      harden verify exports/seg/model.int8.onnx --attacks pgd,apgd-ce --eps 2/255,4/255 --gate survival=0.9
      torchrun --nproc-per-node 4 -m harden verify exports/seg --twin runs/seg --images 500
      harden verify segformer.int8.onnx --reference segformer.onnx --mean 0.485,0.456,0.406 \
          --std 0.229,0.224,0.225 --data cityscapes:/data/cityscapes
    """
    from harden.attacks import parse_eps
    from harden.cli import Failed
    from harden.data import open_dataset
    from harden.devices import local_rank_from_environment, resolve_device
    from harden.distributed import Distributed
    from harden.errors import InputError
    from harden.models.external import is_external
    from harden.outputs import exclusive
    from harden.run import read_config
    from harden.runtime.engines import open_engine
    from harden.runtime.gates import Gates, read_gate_file
    from harden.runtime.twins import GRAPH, InterfaceOptions, load_twins, open_deployment
    from harden.runtime.verify import VerifyOptions, verify

    options = VerifyOptions(
        attacks=tuple(a.strip() for a in attack_spec.split(",") if a.strip()),
        eps_values=tuple(sorted({parse_eps(e) for e in eps_spec.split(",")})),
        steps=iters, eot=eot, draws=draws, queries=queries, divergence_steps=divergence_steps, seed=seed,
        batch_size=batch_size,
    )  # fmt: skip
    overrides = dict(read_gate_file(gate_file)) if gate_file else {}
    for pair in gate_pairs:
        name, _, value = pair.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError as err:
            raise InputError(f"--gate {pair!r}: write NAME=NUMBER, e.g. survival=0.9") from err

    stated = InterfaceOptions(input_name, output_name, float(pixel_range), _channels(mean_spec, "--mean"),
                              _channels(std_spec, "--std"))  # fmt: skip
    deployment = open_deployment(deployed, artefact, interface=stated, reference=reference)
    gates = Gates.for_precision(deployment.precision).with_values(overrides)
    if "clean_agreement" not in overrides and deployment.manifest is not None:
        gates = gates.derived_from_export(deployment.manifest.recorded_agreement(deployment.precision))
    twins = load_twins(list(twin_specs), deployment)
    recorded_run = Path(deployment.manifest.run_dir) if deployment.manifest else None
    run_dir = next((Path(s) for s in twin_specs if s != GRAPH and not is_external(s)), None) or recorded_run
    if run_dir is not None and (run_dir / "config.json").is_file():
        _, train_config = read_config(run_dir)
        data = data or train_config.data
        image_size = image_size or train_config.image_size
    elif data is None and deployment.signed:
        raise InputError(f"the exported run {run_dir} is not here to say which data it used: pass --data")
    elif data is None:
        raise InputError(f"{deployment.artefact.name} is a bare file: pass --data (the images and labels to verify on)")
    image_size = image_size or deployment.image_size
    dataset = open_dataset(data, split, size=image_size, num_images=images, seed=seed, classes=deployment.num_classes)
    classes = deployment.num_classes
    if classes is not None and dataset.num_classes != classes:
        raise InputError(f"{data} has {dataset.num_classes} classes; the model predicts {classes}")

    out = report_dir or deployment.root / "verify"
    target = resolve_device(device, local_rank=local_rank_from_environment())
    if os.environ.get("RANK", "0") == "0":  # one verify per report directory (under torchrun: rank 0 holds it)
        click.get_current_context().with_resource(exclusive(out, "verification"))
    if target.type == "cuda":
        import torch

        torch.cuda.set_device(target)  # TensorRT and NCCL use the current device
    distributed = Distributed.from_environment("nccl" if target.type == "cuda" else "gloo")
    try:
        state_file = out / ("verify.state" if not distributed.active else f"verify.state.rank{distributed.rank}")
        if resume and not state_file.is_file():
            click.echo(f"no {state_file} to resume from: starting from the first batch", err=True)
        if distributed.is_main:
            shards = f" in {distributed.world_size} shards" if distributed.active else ""
            click.echo(f"verifying {deployment.artefact} ({deployment.precision}) against twins {', '.join(twins)} "
                       f"on {len(dataset)} {split} images{shards} ...")  # fmt: skip
        show = progress and sys.stderr.isatty() and distributed.is_main
        with open_engine(deployment.artefact, str(target), deployment.interface) as engine:
            if classes is None:  # the output's channels are not static: ask the model
                _check_classes(engine, dataset, data)
            result = verify(deployment, engine, twins, dataset, options, progress=show, state_file=state_file,
                            resume=resume, distributed=distributed, device=target)  # fmt: skip
        failed = (
            _report(result, gates, options, deployment, dataset, out, twins.get(GRAPH), str(target))
            if result is not None
            else []
        )
        failed = distributed.broadcast(failed)
        state_file.unlink(missing_ok=True)  # the reports are written: nothing left to resume
    finally:
        distributed.close()
    if failed == ["engine-arithmetic"]:
        raise Failed(
            "verification FAILED: engine-arithmetic — the file is faithful to the model, but this engine on this "
            "hardware computes something else (cause and remedy in the engine-arithmetic gate above and in the report)"
        )
    if failed:
        raise Failed(f"verification FAILED: {', '.join(failed)}")
    if distributed.is_main:
        click.echo("verification PASSED")


def _report(
    result: VerifyResult, gates: Gates, options: VerifyOptions, deployment: Deployment, dataset: SegmentationDataset,
    out: Path, graph_twin: Any, device: str,
) -> list[str]:  # fmt: skip
    """Evaluate the gates (naming the first diverging node when parity failed), write the
    reports, print the gates; the names of the failed ones."""
    from harden.runtime.gates import evaluate_gates
    from harden.runtime.localise import localise_failed_parity
    from harden.runtime.report import write_reports
    from harden.visualize import palette_for

    results = evaluate_gates(result, gates, list(options.eps_values))
    results = localise_failed_parity(result, results, graph_twin, dataset, device)
    palette = palette_for(dataset.name, dataset.num_classes)
    written = write_reports(result, results, {**dataclasses.asdict(options), "gates": gates.to_dict()},
                            deployment.manifest.class_names if deployment.manifest else list(dataset.class_names),
                            out, palette)  # fmt: skip
    for gate in results:
        click.echo(f"  [{'pass' if gate.passed else 'FAIL'}] {gate.name:<32} {gate.detail}")
    for line in result.not_judged:
        click.echo(f"  [not judged] {line}")
    click.echo("wrote " + ", ".join(str(p) for p in written))
    return [g.name for g in results if not g.passed]


def _channels(spec: str | None, option: str) -> tuple[float, float, float] | None:
    """'R,G,B' → three floats (None stays None)."""
    if spec is None:
        return None
    from harden.errors import InputError

    try:
        values = tuple(float(v) for v in spec.split(","))
    except ValueError as err:
        raise InputError(f"{option} {spec!r}: write three numbers, e.g. 0.485,0.456,0.406") from err
    if len(values) != 3:
        raise InputError(f"{option} {spec!r}: write three numbers (R,G,B), got {len(values)}")
    return values[0], values[1], values[2]


def _check_classes(engine: Any, dataset: SegmentationDataset, data: str) -> None:
    from harden.errors import InputError

    image, _ = dataset[0]
    predicted = engine.logits(image.unsqueeze(0), 0).shape[1]
    if predicted != dataset.num_classes:
        raise InputError(f"{data} has {dataset.num_classes} classes; the model predicts {predicted}")
