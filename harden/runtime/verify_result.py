"""What `verify` is asked (`VerifyOptions`) and what it returns (`VerifyResult`), and the phases its
time is reported in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from harden.attacks import ATTACKS, ThreatModel
from harden.attacks.checks import Check
from harden.attacks.evaluate import AttackRun, Evaluation
from harden.attacks.worst_case import ImageCounts, WorstCase, worst_case
from harden.errors import InputError
from harden.export.arithmetic import ArithmeticRecord
from harden.json_fields import Fields
from harden.runtime.twins import Deployment
from harden.runtime.verify_state import Agreement, Parity

# the attacks the registry records as black-box run on the engine itself, by queries
BLACK_BOX = tuple(name for name, entry in ATTACKS.items() if entry.kind == "black-box")


# The phases of verify.json's "seconds". Each is timed exclusively: time spent in a phase nested
# inside another (the engine scoring an image inside the attack loop) counts for the inner one.
ENGINE_INFERENCE = "engine_inference"  # the deployed engine's forward passes
TWIN_INFERENCE = "twin_inference"  # the twins' forward passes when scoring (not inside attacks)
ATTACK_CRAFTING = "attack_crafting"  # white-box attacks on the twins, black-box and divergence search
STATE_SAVING = "state_saving"  # the resumable state written after every batch
CHECKS_AND_AUDITS = "checks_and_audits"  # sanity checks, deployment audits, engine arithmetic
EVIDENCE = "evidence"  # the evidence set: re-scoring the stored images on the engine, compressing, writing


@dataclass(frozen=True)
class VerifyOptions:
    """Args:
    attacks: white-box attacks crafted on every twin (registry names).
    eps_values: L∞ radii.
    steps: iterations of every white-box attack (None: each attack's default).
    eot: EOT draws per gradient of a randomised twin (None: 8 if randomised, else 1).
    draws: RAD draws every prediction is evaluated over (None: 3 if the engine uses RAD, else 1).
    queries: Square's queries per image on the engine.
    divergence_steps: PGD steps of the divergence search (0: skip it — only when there is no
        second model to diverge from).
    """

    attacks: tuple[str, ...] = ("fgsm", "strongest")
    eps_values: tuple[float, ...] = (4 / 255, 8 / 255)
    steps: int | None = None
    eot: int | None = None
    draws: int | None = None
    queries: int = 100
    divergence_steps: int = 10
    seed: int = 0
    batch_size: int = 4
    examples: int = 4

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise InputError(f"unknown attack {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        direct = [a for a in self.attacks if a in BLACK_BOX]
        if direct:
            raise InputError(f"{', '.join(direct)} always run on the engine; list only white-box attacks")
        if not self.attacks or not self.eps_values:
            raise InputError("verification needs at least one attack and one ε")
        for eps in self.eps_values:
            ThreatModel(eps)
        for name, value, low in (("queries", self.queries, 1), ("batch size", self.batch_size, 1),
                                 ("divergence steps", self.divergence_steps, 0)):  # fmt: skip
            if value < low:
                raise InputError(f"{name} must be ≥ {low}, got {value}")


@dataclass(frozen=True)
class DivergenceFigures:
    """The divergence search: engine vs the fp32 reference on the images it crafted."""

    ran: bool
    agreement_with_reference: float | None
    pixels: int

    @classmethod
    def from_dict(cls, f: Fields) -> DivergenceFigures:
        return cls(f.boolean("ran"), f.number("agreement_with_reference", optional=True), f.integer("pixels", low=0))


@dataclass
class VerifyResult:
    deployment: Deployment
    engine_name: str
    twins: list[str]
    images: int
    draws: int
    eot: int
    engine: Evaluation  # every candidate predicted by the engine
    twin_evaluations: dict[str, Evaluation]  # each twin's own white-box attacks, predicted by the twin
    shared_runs: dict[str, list[AttackRun]]  # each twin's predictions of every candidate the engine was shown
    clean_parity: dict[str, list[Parity]]  # twin → one per draw
    adversarial_parity: dict[str, Parity]
    divergence: DivergenceFigures
    divergence_counts: Agreement  # per image: the divergence gate's interval
    audits: list[Check]
    checks: list[Check]
    engine_arithmetic: ArithmeticRecord  # the deployed kernels vs the file as written (harden.export.arithmetic)
    seconds: dict[str, float] = field(default_factory=dict)
    localisation: dict[str, Any] | None = None  # the first diverging node when parity failed (runtime.localise)
    not_judged: list[str] = field(default_factory=list)  # what this verdict could not see, and why
    example_predictions: dict[str, torch.Tensor] = field(default_factory=dict)  # engine, draw 0, kept images

    def engine_candidates_at(self, eps: float) -> list[ImageCounts]:
        """Every (attack, member, draw) candidate at ε, as the engine predicted it."""
        return [c for r in self.engine.runs if r.eps == eps for c in r.candidates.values()]

    def twin_candidates_at(self, twin: str, eps: float) -> list[ImageCounts]:
        """The same candidates as `engine_candidates_at` (the same images, in the same order), as
        `twin` predicted them: the two worst cases are taken over one candidate set (like for like)."""
        shared = {(r.attack, r.crafted_on): r for r in self.shared_runs[twin] if r.eps == eps}
        return [shared[(r.attack, r.crafted_on)].candidates[key]
                for r in self.engine.runs if r.eps == eps for key in r.candidates]  # fmt: skip

    def twin_own_candidates_at(self, twin: str, eps: float) -> list[ImageCounts]:
        """The twin's own white-box candidates at ε, as the twin predicted them (its robustness curve)."""
        runs = self.twin_evaluations[twin].runs
        return [c for r in runs if r.eps == eps and r.kind == "white-box" for c in r.candidates.values()]

    def worst_at(self, eps: float) -> WorstCase:
        return worst_case(self.engine_candidates_at(eps))

    def twin_worst_at(self, twin: str, eps: float) -> WorstCase | None:
        """The twin's worst case over every candidate the engine was shown at ε (what survival compares)."""
        candidates = self.twin_candidates_at(twin, eps)
        return worst_case(candidates) if candidates else None

    def twin_own_worst_at(self, twin: str, eps: float) -> WorstCase | None:
        """The twin's worst case over its own white-box attacks at ε."""
        candidates = self.twin_own_candidates_at(twin, eps)
        return worst_case(candidates) if candidates else None
