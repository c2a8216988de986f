"""`VerifyReport`: verify.json as a typed tree that writes (`to_dict`) and reads (`from_dict`) itself.

`summary.summarise` builds it from the run; `junit`, `html_page` and `figures` render it; `harden
replay` and anyone else read verify.json back through `VerifyReport.read`. The JSON it writes is
schema `harden-verify-report-v4` (harden/schemas/verify.schema.json); tests/test_report_record.py
holds the schema and these classes to each other in both directions.

Typed where harden computes with a part (scores, rows, worst cases, parity, gates, checks, the
engine arithmetic); kept as JSON objects where a part is written for people or for other tools
and nothing here computes with it (machine, options, versions, source, data, evidence, the
engine interface, localisation).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from harden.attacks.checks import Check
from harden.errors import InputError
from harden.export.arithmetic import ArithmeticRecord
from harden.export.manifest import Checkpoint
from harden.json_fields import Fields
from harden.ram.config import RAMConfig
from harden.runtime.verify_result import DivergenceFigures

SCHEMA: Final = "harden-verify-report-v4"
FIX: Final = "it is not a verify.json written by this harden; run `harden verify` again"


@dataclass(frozen=True)
class Scores:
    miou: float | None
    pixel_accuracy: float | None

    @classmethod
    def from_dict(cls, f: Fields) -> Scores:
        return cls(f.number("miou", optional=True), f.number("pixel_accuracy", optional=True))


def _scores_or_none(f: Fields, name: str) -> Scores | None:
    found = f.object(name, optional=True)
    return Scores.from_dict(found) if found else None


@dataclass(frozen=True)
class Confidence:
    """The level every interval was computed at; with --images auto, the looks taken."""

    level: float
    looks: list[int]
    images_used: int
    method: str

    @classmethod
    def from_dict(cls, f: Fields) -> Confidence:
        return cls(f.number("level"), f.integers("looks"), f.integer("images_used", low=0),
                   f.string("method"))  # fmt: skip


@dataclass(frozen=True)
class DeploymentRecord:
    dir: str
    artefact: str
    engine: str
    precision: str
    model: str | None
    ram: RAMConfig | None
    files: dict[str, str]  # file name → sha256
    checkpoint: Checkpoint | None
    signed: bool
    interface: dict[str, Any]  # the engine's input/output contract (harden.runtime.interface)
    interface_text: str
    reference: str | None

    @classmethod
    def from_dict(cls, f: Fields) -> DeploymentRecord:
        ram = f.raw_object("ram", optional=True)
        checkpoint = f.object("checkpoint", optional=True)
        return cls(
            dir=f.string("dir"),
            artefact=f.string("artefact"),
            engine=f.string("engine"),
            precision=f.string("precision"),
            model=f.string("model", optional=True),
            ram=RAMConfig.from_dict(ram) if ram else None,
            files=f.raw_object("files"),
            checkpoint=Checkpoint.from_dict(checkpoint) if checkpoint else None,
            signed=f.boolean("signed"),
            interface=f.raw_object("interface"),
            interface_text=f.string("interface_text"),
            reference=f.string("reference", optional=True),
        )


@dataclass(frozen=True)
class ParityRecord:
    """A twin against the engine on the same images and draw."""

    agreement: float
    max_abs_diff: float | None
    pixels: int
    miou_delta: float | None

    @classmethod
    def from_dict(cls, f: Fields) -> ParityRecord:
        return cls(f.number("agreement"), f.number("max_abs_diff", optional=True), f.integer("pixels", low=0),
                   f.number("miou_delta", optional=True))  # fmt: skip


@dataclass(frozen=True)
class ParitySection:
    clean: dict[str, list[ParityRecord]]  # twin → one per RAD draw
    adversarial: dict[str, ParityRecord]

    @classmethod
    def from_dict(cls, f: Fields) -> ParitySection:
        clean = f.raw_object("clean")
        return cls(
            clean={t: [ParityRecord.from_dict(Fields(p, f"{f.where}: clean.{t}", FIX)) for p in ps]
                   for t, ps in clean.items()},
            adversarial={t: ParityRecord.from_dict(p) for t, p in (f.object_map("adversarial") or {}).items()},
        )  # fmt: skip


@dataclass(frozen=True)
class AttackRow:
    """One attack at one ε, scored on one side: the engine, or a twin on its own predictions."""

    side: str
    attack: str
    crafted_on: str
    kind: str
    eps: float
    pixel_accuracy: float
    miou: float
    seconds: float | None = None  # engine rows only

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.seconds is None:
            del out["seconds"]
        return out

    @classmethod
    def from_dict(cls, f: Fields) -> AttackRow:
        return cls(f.string("side"), f.string("attack"), f.string("crafted_on"), f.string("kind"), f.number("eps"),
                   f.number("pixel_accuracy"), f.number("miou"), f.number("seconds", optional=True))  # fmt: skip


@dataclass(frozen=True)
class ImageWorst:
    """One image's lowest pixel accuracy at an ε, and the candidate that reached it."""

    pixel_accuracy: float
    attack: str  # "attack[crafted on]:member@draw"


@dataclass(frozen=True)
class WorstCaseAt:
    """The worst case at one ε: the engine's and each twin's scores, per image, per class.
    `twins`: each twin's worst case over its own white-box attacks (its robustness curve);
    `twins_same_candidates`: each twin's worst case over every candidate the engine was shown,
    what the survival gate compares the engine with (like for like)."""

    eps: float
    eps_text: str
    engine: Scores | None
    twins: dict[str, Scores | None]
    twins_same_candidates: dict[str, Scores | None]
    per_image: list[ImageWorst]
    per_class_iou: dict[str, list[float | None]]  # "engine" (under the mIoU assignment) and "clean"

    @classmethod
    def from_dict(cls, f: Fields) -> WorstCaseAt:
        twins, same = f.raw_object("twins"), f.raw_object("twins_same_candidates")
        per_image = [ImageWorst(p.number("pixel_accuracy"), p.string("attack")) for p in f.objects("per_image")]
        return cls(
            eps=f.number("eps"),
            eps_text=f.string("eps_text"),
            engine=_scores_or_none(f, "engine"),
            twins={t: _scores_or_none(Fields(twins, f"{f.where}: twins", FIX), t) for t in twins},
            twins_same_candidates={
                t: _scores_or_none(Fields(same, f"{f.where}: twins_same_candidates", FIX), t) for t in same
            },
            per_image=per_image,
            per_class_iou=f.raw_object("per_class_iou"),
        )


@dataclass(frozen=True)
class GateRecord:
    """One gate's decision as reported; `interval` is what a sampled figure decided from."""

    name: str
    passed: bool
    outcome: str  # pass | fail | inconclusive
    detail: str
    interval: dict[str, Any] | None  # point, low, high, confidence, method, images (harden.runtime.confidence)
    threshold: float | None
    more_images: int | None

    @property
    def kind(self) -> str:
        """The gate's family: "survival", "robust-miou", "clean-agreement", "data", ..."""
        return self.name.split("[", 1)[0].split("@", 1)[0]

    @property
    def twin(self) -> str | None:
        """The twin a per-twin gate compares with (`survival[graph]@4/255` → "graph")."""
        return self.name.split("[", 1)[1].split("]", 1)[0] if "[" in self.name else None

    @property
    def eps_text(self) -> str | None:
        """The ε of a per-ε gate as written in its name (`survival[graph]@4/255` → "4/255")."""
        return self.name.rsplit("@", 1)[1] if "@" in self.name else None

    @classmethod
    def from_dict(cls, f: Fields) -> GateRecord:
        return cls(f.string("name"), f.boolean("passed"), f.string("outcome"), f.string("detail"),
                   f.raw_object("interval", optional=True), f.number("threshold", optional=True),
                   f.integer("more_images", optional=True))  # fmt: skip


def _check(f: Fields) -> Check:
    return Check(f.string("name"), f.string("status"), f.string("detail"))


@dataclass(frozen=True)
class VerifyReport:
    """verify.json; see the module docstring. Field order is the JSON's."""

    verdict: str
    confidence: Confidence
    machine: dict[str, Any]
    created: str
    command: str
    deployment: DeploymentRecord
    twins: list[str]
    class_names: list[str]
    images: int
    draws: int
    eot: int
    seeds: dict[str, Any]  # the attacks' seed and the evaluation draws' seeds
    options: dict[str, Any]  # everything verify was asked, gates included
    versions: dict[str, str | None]
    harden_source: dict[str, Any]  # the git commit harden ran from (harden.runtime.traceability)
    data: dict[str, Any]  # the images verified (harden.runtime.traceability)
    evidence: dict[str, Any] | None  # the evidence set's manifest (None: --no-evidence)
    clean: dict[str, Scores]  # "engine" and each twin
    parity: ParitySection
    divergence: DivergenceFigures
    rows: list[AttackRow]
    worst_case: list[WorstCaseAt]
    audits: list[Check]
    engine_arithmetic: ArithmeticRecord
    localisation: dict[str, Any] | None  # the first diverging node when parity failed
    not_judged: list[str]
    checks: list[Check]
    gates: list[GateRecord]
    seconds: dict[str, float]  # per phase (harden.runtime.verify_result)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA, **dataclasses.asdict(self)}
        out["rows"] = [row.to_dict() for row in self.rows]  # a twin's row has no seconds
        out["engine_arithmetic"] = self.engine_arithmetic.to_dict()  # the verdict's figures, flat
        return out

    @classmethod
    def read(cls, path: Path) -> VerifyReport:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: not a readable verify.json ({err})") from err
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> VerifyReport:
        f = Fields(data, where, FIX)
        if f.string("schema") != SCHEMA:
            raise InputError(f"{where}: schema {data.get('schema')!r}, not {SCHEMA}; {FIX}")
        clean = f.object_map("clean") or {}
        return cls(
            verdict=f.string("verdict"),
            confidence=Confidence.from_dict(f.required_object("confidence")),
            machine=f.raw_object("machine"),
            created=f.string("created"),
            command=f.string("command"),
            deployment=DeploymentRecord.from_dict(f.required_object("deployment")),
            twins=f.strings("twins"),
            class_names=f.strings("class_names"),
            images=f.integer("images", low=0),
            draws=f.integer("draws", low=1),
            eot=f.integer("eot", low=1),
            seeds=f.raw_object("seeds"),
            options=f.raw_object("options"),
            versions=f.raw_object("versions"),
            harden_source=f.raw_object("harden_source"),
            data=f.raw_object("data"),
            evidence=f.raw_object("evidence", optional=True),
            clean={k: Scores.from_dict(v) for k, v in clean.items()},
            parity=ParitySection.from_dict(f.required_object("parity")),
            divergence=DivergenceFigures.from_dict(f.required_object("divergence")),
            rows=[AttackRow.from_dict(r) for r in f.objects("rows")],
            worst_case=[WorstCaseAt.from_dict(w) for w in f.objects("worst_case")],
            audits=[_check(c) for c in f.objects("audits")],
            engine_arithmetic=ArithmeticRecord.from_dict(f.required_object("engine_arithmetic")),
            localisation=f.raw_object("localisation", optional=True),
            not_judged=f.strings("not_judged"),
            checks=[_check(c) for c in f.objects("checks")],
            gates=[GateRecord.from_dict(g) for g in f.objects("gates")],
            seconds=f.raw_object("seconds"),
        )

    # -- what the renderers ask of it --

    def worst_at(self, eps: float) -> WorstCaseAt | None:
        return next((w for w in self.worst_case if w.eps == eps), None)

    def eps_of(self, eps_text: str) -> float | None:
        return next((w.eps for w in self.worst_case if w.eps_text == eps_text), None)
