"""`harden verify` as one library call: from a deployment and its twins to a verdict.

`verification_data` picks the images (the exported run's data unless told otherwise);
`release_gates` the thresholds (per precision, the user's overrides, the export's recorded
parity); `verify_release` opens the engine, runs `verify` (resumable, sharded under torchrun),
judges the gates, names the first diverging node when parity failed, writes verify.json,
junit.xml and report.html, and returns what the command prints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harden.data import SegmentationDataset, open_dataset
from harden.distributed import Distributed
from harden.errors import InputError
from harden.models.external import is_external
from harden.outputs import exclusive
from harden.run import read_config
from harden.runtime.confidence import METHOD, MIN_IMAGES, Outcome
from harden.runtime.engines import Engine, open_engine
from harden.runtime.evidence import FOLDER as EVIDENCE_FOLDER
from harden.runtime.evidence import EvidenceWriter
from harden.runtime.gate_values import Gates, read_gate_file
from harden.runtime.gates import GateResult, evaluate_gates, verdict_of
from harden.runtime.localise import localise_failed_parity
from harden.runtime.report import write_reports
from harden.runtime.traceability import data_record
from harden.runtime.twins import GRAPH, Deployment
from harden.runtime.verify import VerifyOptions, VerifyResult, verify
from harden.visualize import palette_for


def gate_overrides(gate_file: Path | None, pairs: tuple[str, ...] = ()) -> dict[str, float]:
    """Gate values from `gate_file` (TOML or JSON), then each NAME=VALUE of `pairs` on top."""
    overrides = dict(read_gate_file(gate_file)) if gate_file else {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError as err:
            raise InputError(f"--gate {pair!r}: write NAME=NUMBER, e.g. survival=0.9") from err
    return overrides


def release_gates(deployment: Deployment, overrides: dict[str, float]) -> Gates:
    """The precision's gates with the user's overrides; a signed export's source-twin agreement is
    raised to what the export recorded, minus a margin, unless the user set clean_agreement."""
    gates = Gates.for_precision(deployment.precision).with_values(overrides)
    if "clean_agreement" not in overrides and deployment.manifest is not None:
        gates = gates.derived_from_export(deployment.manifest.recorded_agreement(deployment.precision))
    return gates


def verification_data(
    deployment: Deployment, twin_specs: list[str], *, data: str | None, split: str, images: int,
    image_size: tuple[int, int] | None, seed: int,
) -> SegmentationDataset:  # fmt: skip
    """The images to verify on: `data`, else the data of the trained run (a run-directory twin,
    else the run the export recorded), at that run's image size."""
    asked = image_size
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
    static = deployment.image_size
    if static is not None and image_size is not None and tuple(image_size) != static:
        given = "--image-size" if asked is not None else f"the run {run_dir}"
        raise InputError(
            f"{deployment.onnx.name} takes only {static[0]}x{static[1]} images (its input has a static size) but "
            f"{given} asks for {image_size[0]}x{image_size[1]}: pass --image-size {static[0]}x{static[1]}, or "
            "export the model with a dynamic input size"
        )
    dataset = open_dataset(data, split, size=image_size or deployment.image_size, num_images=images, seed=seed,
                           classes=deployment.num_classes)  # fmt: skip
    classes = deployment.num_classes
    if classes is not None and dataset.num_classes != classes:
        raise InputError(f"{data} has {dataset.num_classes} classes; the model predicts {classes}")
    return dataset


@dataclass(frozen=True)
class Confidence:
    """The confidence the gates decide at and, with `--images auto`, the looks: after every batch
    up to the budget. Every interval is one member of a confidence sequence
    (`harden.runtime.confidence`), valid at every number of images at once, so no look costs
    another any confidence, and a resumed or extended run may look again."""

    level: float = 0.95
    looks: tuple[int, ...] = ()  # numbers of images after which to judge; empty: once, on all images

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1:
            raise InputError(f"--confidence must be in [0.5, 1), got {self.level}")

    @classmethod
    def auto(cls, level: float, batch_size: int, max_images: int) -> Confidence:
        """A look after every batch, and at `max_images` (the budget)."""
        if max_images < batch_size:
            raise InputError(f"--max-images {max_images} is below --batch-size {batch_size}: nothing to look at")
        return cls(level, (*range(batch_size, max_images, batch_size), max_images))

    def record(self, images_used: int) -> dict[str, Any]:
        """verify.json's `confidence`."""
        taken = [n for n in self.looks if n <= images_used] or [images_used]
        return {"level": self.level, "looks": taken, "images_used": images_used,
                "method": METHOD}  # fmt: skip


@dataclass
class Verdict:
    """What `verify_release` concluded (on every rank `failed`; the rest on rank 0 only)."""

    failed: list[str]  # names of the gates that did not pass (failed or inconclusive); empty: the release passes
    gates: list[GateResult] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    outcome: Outcome = "fail"
    images: int = 0  # images the verdict was reached on (fewer than asked when --images auto decided early)


def verify_release(
    deployment: Deployment, twins: dict[str, Any], dataset: SegmentationDataset, options: VerifyOptions,
    gates: Gates, out: Path, *, device: torch.device, resume: bool = False, progress: bool = False,
    command: str = "", log: Callable[[str], None] = print, confidence: Confidence | None = None,
    evidence: bool = True,
) -> Verdict:  # fmt: skip
    """Run the verification into `out` (one verification per directory: it is locked) and judge it
    at `confidence` (default 0.95, one look on every image). `evidence`: leave the evidence set
    in OUT/evidence (`harden.runtime.evidence`) for `harden replay`.

    The state is saved after every batch to OUT/verify.state (per rank under torchrun) and
    removed once the reports are written; `resume` continues from it.
    """
    if confidence is not None and confidence.looks and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("--images auto decides after each look in one process: run it without torchrun")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 holds the lock
    with exclusive(out, "verification") if main_process else nullcontext():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # TensorRT and NCCL use the current device
        with Distributed.from_environment("nccl" if device.type == "cuda" else "gloo") as distributed:
            return _verify_and_judge(deployment, twins, dataset, options, gates, out, distributed, device=device,
                                     resume=resume, progress=progress, command=command, log=log,
                                     confidence=confidence or Confidence(), evidence=evidence)  # fmt: skip


def _verify_and_judge(
    deployment: Deployment, twins: dict[str, Any], dataset: SegmentationDataset, options: VerifyOptions,
    gates: Gates, out: Path, distributed: Distributed, *, device: torch.device, resume: bool, progress: bool,
    command: str, log: Callable[[str], None], confidence: Confidence, evidence: bool,
) -> Verdict:  # fmt: skip
    state_file = out / ("verify.state" if not distributed.active else f"verify.state.rank{distributed.rank}")
    if resume and not state_file.is_file():
        log(f"no {state_file} to resume from: starting from the first batch")
    if distributed.is_main:
        shards = f" in {distributed.world_size} shards" if distributed.active else ""
        looks = f" (until decided; looks at {', '.join(map(str, confidence.looks))})" if confidence.looks else ""
        log(f"verifying {deployment.artefact} ({deployment.precision}) against twins {', '.join(twins)} "
            f"on {len(dataset)} images{looks}{shards} ...")  # fmt: skip
        if len(dataset) < MIN_IMAGES:
            log(
                f"note: {len(dataset)} images are fewer than the {MIN_IMAGES} a gate needs to pass once its figure "
                "varies from image to image (docs/verdicts.md §2): such gates can fail a gross break here, not pass"
            )
    eps_values = list(options.eps_values)

    def decided(partial: VerifyResult) -> bool:
        outcome = verdict_of(evaluate_gates(partial, gates, eps_values, confidence.level))
        log(f"  look at {partial.images} images: {outcome}")
        return outcome != "inconclusive"

    writer = None
    if evidence:
        writer = EvidenceWriter(out / EVIDENCE_FOLDER, eps_values, dataset.num_classes)
        writer.start()
    with open_engine(deployment.artefact, str(device), deployment.interface) as engine:
        if deployment.num_classes is None:  # the output's channels are not static: ask the model
            _check_classes(engine, dataset)
        result = verify(deployment, engine, twins, dataset, options, progress=progress and distributed.is_main,
                        state_file=state_file, resume=resume, distributed=distributed, device=device,
                        looks=list(confidence.looks) or None, decided=decided, evidence=writer)  # fmt: skip
    verdict = Verdict([])
    if result is not None:  # rank 0: judge and report
        results = evaluate_gates(result, gates, eps_values, confidence.level)
        results = localise_failed_parity(result, results, twins.get(GRAPH), dataset, str(device))
        class_names = deployment.manifest.class_names if deployment.manifest else list(dataset.class_names)
        settings = {**dataclasses.asdict(options), "gates": gates.to_dict()}
        data = data_record(dataset, result.images, deployment)
        evidence_record = None
        if writer is not None:
            first_ids = list(range(0, result.images, options.batch_size))
            manifest_path, digest = writer.finish(first_ids, result.draws, evidence_deployment(result), class_names,
                                                  data)  # fmt: skip
            evidence_record = {"manifest": str(manifest_path.relative_to(out)), "sha256": digest,
                               "bytes": sum(p.stat().st_size for p in manifest_path.parent.iterdir())}  # fmt: skip
        written = write_reports(result, results, settings, class_names, out,
                                palette_for(dataset.name, dataset.num_classes), command=command,
                                confidence=confidence.record(result.images), data=data,
                                evidence=evidence_record)  # fmt: skip
        verdict = Verdict([g.name for g in results if not g.passed], results, result.not_judged, written,
                          verdict_of(results), result.images)  # fmt: skip
    verdict.failed, verdict.outcome = distributed.broadcast((verdict.failed, verdict.outcome))
    state_file.unlink(missing_ok=True)  # the reports are written: nothing left to resume
    return verdict


def evidence_deployment(result: VerifyResult) -> dict[str, Any]:
    """The evidence manifest's record of the deployment whose engine predicted it."""
    deployment = result.deployment
    return {"artefact": deployment.artefact.name, "engine": result.engine_name, "precision": deployment.precision,
            "files": deployment.file_hashes(), "interface": deployment.interface.to_dict()}  # fmt: skip


def _check_classes(engine: Engine, dataset: SegmentationDataset) -> None:
    image, _ = dataset[0]
    predicted = engine.logits(image.unsqueeze(0), 0).shape[1]
    if predicted != dataset.num_classes:
        raise InputError(f"the data has {dataset.num_classes} classes; the model predicts {predicted}")
