"""The run and its gates as a `VerifyReport` (verify.json's typed tree): every figure the renderers show."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.threat import format_eps
from harden.attacks.worst_case import ImageCounts, WorstCase
from harden.export.arithmetic import machine_facts
from harden.export.files import versions
from harden.runtime.confidence import METHOD
from harden.runtime.gates import GateResult, verdict_of
from harden.runtime.report.record import (
    AttackRow,
    Confidence,
    DeploymentRecord,
    GateRecord,
    ImageWorst,
    ParityRecord,
    ParitySection,
    Scores,
    VerifyReport,
    WorstCaseAt,
)
from harden.runtime.traceability import harden_source
from harden.runtime.verify_result import VerifyResult
from harden.runtime.verify_state import Parity


def summarise(
    result: VerifyResult,
    gates: list[GateResult],
    options: dict[str, Any],
    class_names: list[str],
    command: str = "",
    confidence: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    evidence: dict[str, Any] | None = None,
) -> VerifyReport:
    """The report of `result` judged by `gates`; `command`: the command line that asked for it;
    `confidence`: the level the gates decided at and, with --images auto, the looks taken;
    `data`: the images verified (`harden.runtime.traceability.data_record`); `evidence`: the
    evidence set's manifest and sha256 (None: --no-evidence)."""
    manifest = result.deployment.manifest
    engine_miou, engine_acc = result.engine.clean_scores()
    clean = {"engine": Scores(engine_miou, engine_acc)}
    clean.update({t: Scores(*e.clean_scores()) for t, e in result.twin_evaluations.items()})
    deployment = DeploymentRecord(
        dir=str(result.deployment.root),
        artefact=result.deployment.artefact.name,
        engine=result.engine_name,
        precision=result.deployment.precision,
        model=manifest.model if manifest else None,
        ram=manifest.ram if manifest else None,
        files=result.deployment.file_hashes(),
        checkpoint=manifest.checkpoint if manifest else None,
        signed=result.deployment.signed,
        interface=result.deployment.interface.to_dict(),
        interface_text=result.deployment.interface.describe(),
        reference=result.deployment.reference_file.name if result.deployment.reference_file else None,
    )
    parity = ParitySection(
        clean={t: [_parity(p) for p in ps] for t, ps in result.clean_parity.items()},
        adversarial={t: _parity(p) for t, p in result.adversarial_parity.items()},
    )
    return VerifyReport(
        verdict=verdict_of(gates),
        confidence=Confidence(**(confidence or single_look(0.95, result.images))),
        machine=machine_facts(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=command,
        deployment=deployment,
        twins=result.twins,
        class_names=class_names,
        images=result.images,
        draws=result.draws,
        eot=result.eot,
        seeds={"attack": options.get("seed"), "evaluation_draws": [DRAW_SEED + d for d in range(result.draws)]},
        options=options,
        versions=versions(),
        harden_source=harden_source(),
        data=data or {"source": None, "num_classes": None, "images": [], "calibration": {"disjoint": None}},
        evidence=evidence,
        clean=clean,
        parity=parity,
        divergence=result.divergence,
        rows=_rows(result),
        worst_case=[_worst_case_at(result, eps) for eps in sorted({r.eps for r in result.engine.runs})],
        audits=result.audits,
        engine_arithmetic=result.engine_arithmetic,
        localisation=result.localisation,
        not_judged=result.not_judged,
        checks=result.checks,
        gates=[GateRecord(**g.to_dict()) for g in gates],
        seconds=result.seconds,
    )


def single_look(level: float, images: int) -> dict[str, Any]:
    """verify.json's `confidence` for a run judged once, on all its images."""
    return {"level": level, "looks": [images], "images_used": images, "method": METHOD}


def _parity(parity: Parity) -> ParityRecord:
    return ParityRecord(**parity.to_dict())


def _rows(result: VerifyResult) -> list[AttackRow]:
    """Every attack run's worst case: on the engine (with its time), then each twin on its own."""
    rows = []
    for run in result.engine.runs:
        worst = run.worst()
        rows.append(AttackRow("engine", run.attack, run.crafted_on, run.kind, run.eps, worst.pixel_accuracy,
                              worst.miou, run.seconds))  # fmt: skip
    for twin, evaluation in result.twin_evaluations.items():
        for run in evaluation.runs:
            worst = run.worst()
            rows.append(AttackRow(twin, run.attack, twin, run.kind, run.eps, worst.pixel_accuracy, worst.miou))
    return rows


def _worst_case_at(result: VerifyResult, eps: float) -> WorstCaseAt:
    engine = result.worst_at(eps)
    candidates = [
        f"{r.attack}[{r.crafted_on}]:{key}" for r in result.engine.runs if r.eps == eps for key in r.candidates
    ]
    per_image = [ImageWorst(float(a), candidates[int(c)])
                 for a, c in zip(_per_image_accuracy(result, eps), engine.accuracy_choice, strict=True)]  # fmt: skip
    return WorstCaseAt(
        eps=eps,
        eps_text=format_eps(eps),
        engine=_scores(engine),
        twins={t: _scores(result.twin_own_worst_at(t, eps)) for t in result.twins},
        twins_same_candidates={t: _scores(result.twin_worst_at(t, eps)) for t in result.twins},
        per_image=per_image,
        per_class_iou={
            "engine": _class_iou(result, eps, engine),
            "clean": _clean_class_iou(result.engine.clean[0]),
        },  # clean: draw 0
    )


def _scores(worst: WorstCase | None) -> Scores | None:
    return None if worst is None else Scores(worst.miou, worst.pixel_accuracy)


def _per_image_accuracy(result: VerifyResult, eps: float) -> np.ndarray:
    return np.stack([c.accuracy_per_image() for c in result.engine_candidates_at(eps)]).min(0)


def _class_iou(result: VerifyResult, eps: float, worst: WorstCase) -> list[float | None]:
    """Per-class IoU of the engine under the worst-case mIoU assignment `worst` at ε."""
    candidates, choice = result.engine_candidates_at(eps), worst.miou_choice
    rows = np.arange(len(choice))
    tp, fp, fn = (np.stack([getattr(c, k) for c in candidates])[choice, rows].sum(0) for k in ("tp", "fp", "fn"))
    return _iou(tp, fp, fn)


def _clean_class_iou(counts: ImageCounts) -> list[float | None]:
    return _iou(counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0))


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float | None]:
    union = tp + fp + fn
    return [float(t / u) if u else None for t, u in zip(tp, union, strict=True)]
