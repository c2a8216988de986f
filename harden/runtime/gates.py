"""Release gates over a `VerifyResult`: pass (exit 0), fail (exit 1) or inconclusive (exit 3),
failing closed.

Defaults depend on the deployed precision (the parity tolerances of `harden export`), and any
of them can be set from a TOML or JSON file (`[gates]` table or top-level keys) or from flags:

    clean_agreement = 0.999        # engine vs every twin, argmax on clean images, worst draw
    clean_miou_delta = 0.001       # |mIoU(engine) − mIoU(twin)| on clean images, worst draw
    adversarial_agreement = 0.99   # engine vs the twin that crafted the images
    survival = 0.95                # engine robust mIoU ≥ survival × twin robust mIoU, every ε
    min_robust_miou = 0.0          # engine worst-case mIoU at every ε (0: no floor)

A signed export also raises the source twin's clean-agreement gate to the agreement the export
itself recorded, minus one point (`Gates.derived_from_export`), unless clean_agreement is set:
an int8 file a point worse than when it was exported fails although it is above the 0.90 floor.

Fail closed: no images, a failed audit, and a failed sanity check (including one whose premise
was present but that could not measure anything) fail the verdict; a check whose premise the
user left out (no single-step attack for iterative>single) is "n/a" with its reason. The
`engine-arithmetic` gate fails when the engine's kernels on this
hardware compute something other than the file as written (`harden.export.arithmetic`; its
threshold per precision is `MIN_AGREEMENT` there): the file may be faithful while the engine
is not, and the gate's detail names the cause.

Every gate on a figure measured on the sample of images decides from its confidence interval
(`harden.runtime.confidence`): pass when the interval is wholly on the right side of the
threshold, fail when wholly on the wrong side, inconclusive (fails closed, with about how many
more images would decide) when it straddles it. The source twin's derived agreement gate widens
its margin by what the engine-arithmetic audit of the same run measured (`arithmetic_shift`), so
a machine whose kernels compute the file differently does not move the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from harden.attacks.checks import Check
from harden.attacks.threat import format_eps
from harden.attacks.worst_case import ImageCounts, WorstCase
from harden.runtime.confidence import (
    Interval,
    Outcome,
    absolute_difference_interval,
    agreement_interval,
    decide,
    fail_p_value,
    images_to_decide,
    miou_interval_of,
    ratio_interval,
)
from harden.runtime.gate_values import EXPORT_PARITY_MARGIN, Gates
from harden.runtime.verify_result import VerifyResult
from harden.runtime.verify_state import Agreement, Parity


@dataclass(frozen=True)
class GateResult:
    """One gate's decision. Gates on figures measured on a sample of images carry the interval
    they decided from (`harden.runtime.confidence`); the others (data, audits, engine
    arithmetic, sanity checks) are exact statements about this run and carry none."""

    name: str
    outcome: Outcome
    detail: str
    interval: Interval | None = None
    threshold: float | None = None
    more_images: int | None = None  # inconclusive: roughly how many more images would decide
    fail_p: float | None = None  # anytime-valid p-value of "this gate fails" (Holm across gates; not reported)

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @classmethod
    def exact(cls, name: str, passed: bool, detail: str) -> GateResult:
        return cls(name, "pass" if passed else "fail", detail)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "outcome": self.outcome, "detail": self.detail,
                "interval": self.interval.to_dict() if self.interval else None, "threshold": self.threshold,
                "more_images": self.more_images}  # fmt: skip


def estimated_gate(
    name: str, intervals: list[Interval], threshold: float, *, at_least: bool, describe: str, percent: bool = False
) -> GateResult:
    """A gate decided from one interval per RAD draw: it passes when every draw's interval is on
    the right side, fails when one draw's is wholly on the wrong side, and is inconclusive
    otherwise. The reported interval is the worst draw's."""
    outcomes = [decide(i, threshold, at_least=at_least) for i in intervals]
    outcome: Outcome = "fail" if "fail" in outcomes else "inconclusive" if "inconclusive" in outcomes else "pass"
    # the draw that decided: among those with the verdict's outcome, the worst estimate
    deciding = [i for i, o in zip(intervals, outcomes, strict=True) if o == outcome]
    sign = 1 if at_least else -1
    worst = min(deciding, key=lambda i: sign * i.point if math.isfinite(i.point) else -math.inf)
    more = None
    if outcome == "inconclusive":
        undecided = [i for i, o in zip(intervals, outcomes, strict=True) if o == "inconclusive"]
        counts = [images_to_decide(i, threshold) for i in undecided]
        more = None if None in counts else max(c for c in counts if c is not None)
    relation = "≥" if at_least else "≤"
    detail = f"{describe} {worst.text(percent=percent)} at {worst.confidence:.4g} confidence over {worst.images} images"
    detail += f" (gate {relation} {threshold:.2%})" if percent else f" (gate {relation} {threshold:.4g})"
    if len(intervals) > 1:
        detail += f", worst of {len(intervals)} RAD draws"
    if outcome == "inconclusive":
        detail += (
            f" — INCONCLUSIVE: the interval straddles the gate; about {more} more image{'s' if more != 1 else ''} "
            "would decide"
            if more is not None
            else " — INCONCLUSIVE: the interval straddles the gate and the estimate sits on it; more images "
            "will not decide, a different threshold or a better deployment would"
        )
    # the gate fails if any draw fails: Bonferroni over the draws inside the gate. An interval that
    # could not be computed fails closed by rule, not by evidence: no p-value, not in Holm's family
    computed = all(not (math.isnan(i.low) or math.isnan(i.high)) for i in intervals)
    fail_p = (
        min(1.0, len(intervals) * min(fail_p_value(i, threshold, at_least=at_least) for i in intervals))
        if computed
        else None
    )
    return GateResult(name, outcome, detail, worst, threshold, more, fail_p)


def holm(gates: list[GateResult], confidence: float) -> list[GateResult]:
    """Family-wise error control of the gates a verdict names as failed.

    A PASS is the intersection of every gate passing, so each gate at level α already bounds the
    chance of a wrong PASS by α (an intersection-union test needs no correction). A FAIL names
    gates, and each name is a claim: Holm's step-down procedure over the estimated gates' fail
    p-values keeps the chance that ANY named failure is wrong below α. A gate whose interval
    failed at its own level but does not survive Holm becomes inconclusive and says so.
    Exact gates (audits, data, checks) state facts of the run and are not part of the family."""
    alpha = 1 - confidence
    family = sorted((g for g in gates if g.fail_p is not None), key=lambda g: g.fail_p or 0.0)
    confirmed: set[str] = set()
    for rank, gate in enumerate(family):
        if (gate.fail_p or 0.0) > alpha / (len(family) - rank):
            break
        confirmed.add(gate.name)
    out = []
    for gate in gates:
        if gate.outcome == "fail" and gate.fail_p is not None and gate.name not in confirmed:
            detail = (f"{gate.detail} — INCONCLUSIVE: fails at its own level, not after Holm's correction over "
                      f"{len(family)} estimated gates (p = {gate.fail_p:.3g})")  # fmt: skip
            gate = replace(gate, outcome="inconclusive", detail=detail)
        out.append(gate)
    return out


def _chosen(candidates: list[ImageCounts], choice: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the (tp, fp, fn) of the candidate the worst case chose for it: (N, K) each."""
    rows = np.arange(len(choice))

    def pick(field: str) -> np.ndarray:
        return np.stack([getattr(c, field) for c in candidates])[choice, rows].astype(np.float64)

    return pick("tp"), pick("fp"), pick("fn")


def agreement_intervals(agreements: list[Agreement], confidence: float) -> list[Interval]:
    return [agreement_interval(*a.per_image(), confidence) for a in agreements]


def miou_delta_interval(parity: Parity, confidence: float) -> Interval:
    """|mIoU(engine) − mIoU(twin)| on the same images (paired)."""
    assert parity.twin is not None and parity.engine is not None
    twin, engine = parity.twin, parity.engine
    return absolute_difference_interval((engine.tp, engine.fp, engine.fn), (twin.tp, twin.fp, twin.fn), confidence)


def survival_interval(engine: list[ImageCounts], engine_worst: WorstCase, twin: list[ImageCounts],
                      twin_worst: WorstCase, confidence: float) -> Interval:  # fmt: skip
    """engine worst-case mIoU / twin worst-case mIoU, each image keeping its worst-case choice on
    each side (paired: the same images on both sides)."""
    return ratio_interval(_chosen(engine, engine_worst.miou_choice), _chosen(twin, twin_worst.miou_choice),
                          confidence)  # fmt: skip


def miou_interval(candidates: list[ImageCounts], worst: WorstCase, confidence: float) -> Interval:
    return miou_interval_of(_chosen(candidates, worst.miou_choice), confidence)


def _sanity_gate(checks: list[Check]) -> GateResult:
    """Fails on a failed check. A check whose premise this run lacks by the user's choice (e.g.
    iterative>single without a single-step attack) is "n/a": it says why and does not decide
    the verdict (docs/design.md §6). A check whose premise was there but that measured nothing says
    "fail" itself (see `harden.attacks.checks`), so it fails closed here."""
    failed = [c for c in checks if c.status == "fail"]
    absent = [c for c in checks if c.status == "n/a"]
    if failed:
        return GateResult.exact("sanity-checks", False, "; ".join(f"{c.name} fail: {c.detail}" for c in failed))
    detail = f"{len(checks) - len(absent)} sanity checks passed (docs/design.md §6)"
    if absent:
        detail += "; n/a, premise not in this run: " + "; ".join(f"{c.name} ({c.detail})" for c in absent)
    return GateResult.exact("sanity-checks", True, detail)


def arithmetic_shift(result: VerifyResult) -> float:
    """How far this machine's engine may move an agreement measured with the file as written: the
    share of pixels where the engine-arithmetic audit of THIS run saw the deployed kernels and the
    file as written disagree (0 when they agree, or when there is no such audit)."""
    verdict = result.engine_arithmetic.verdict
    return 0.0 if verdict is None else max(0.0, 1.0 - verdict.comparison.argmax_agreement)


def clean_parity_gates(
    twin: str, parities: list[Parity], gates: Gates, confidence: float = 0.95, shift: float = 0.0
) -> list[GateResult]:
    """Agreement and mIoU change of the engine against `twin` on clean images, each draw's interval.
    The source twin's agreement gate is the export's recorded parity minus the margin when that
    is stricter than the precision's floor; the margin grows by `shift`, the disagreement between
    this machine's kernels and the file as written that the engine-arithmetic audit measured (the
    export recorded its parity with the file as written, which every machine computes alike)."""
    threshold, why = gates.clean_agreement, ""
    if twin == "source" and gates.source_agreement(shift) > gates.clean_agreement:
        threshold = gates.source_agreement(shift)
        why = f"; the export's recorded {gates.export_agreement:.2%} − {EXPORT_PARITY_MARGIN:.0%}"
        why += f" − {shift:.2%} this engine's arithmetic" if shift > 0 else ""
    agreement = estimated_gate(
        f"clean-agreement[{twin}]", agreement_intervals([p.agreement_counts for p in parities], confidence),
        threshold, at_least=True, percent=True,
        describe=f"engine vs {twin} twin on clean images (max |Δlogit| "
        f"{max(p.max_abs for p in parities):.3g}{why}): argmax agreement",
    )  # fmt: skip
    delta = estimated_gate(
        f"clean-miou-delta[{twin}]", [miou_delta_interval(p, confidence) for p in parities], gates.clean_miou_delta,
        at_least=False, describe=f"|mIoU(engine) − mIoU({twin})|",
    )  # fmt: skip
    return [agreement, delta]


def evaluate_gates(
    result: VerifyResult, gates: Gates, eps_values: list[float], confidence: float = 0.95
) -> list[GateResult]:
    """Every gate, in the order a reader checks them; the verdict passes only if all pass."""
    out = [
        GateResult.exact(
            "data",
            result.images > 0 and all(result.engine.worst_at(e) is not None for e in eps_values),
            f"{result.images} images, every ε attacked",
        )
    ]
    failed = [c for c in result.audits if c.status == "fail"]
    out.append(
        GateResult.exact(
            "deployment-audits",
            not failed,
            "; ".join(c.detail for c in failed) or f"{len(result.audits)} audits passed or not applicable",
        )
    )
    arithmetic = result.engine_arithmetic
    out.append(
        GateResult.exact(
            "engine-arithmetic",
            arithmetic.status != "fail",
            ("n/a: " if arithmetic.status == "n/a" else "") + arithmetic.text,
        )
    )
    out.append(_sanity_gate(result.checks))
    shift = arithmetic_shift(result)
    for twin, parities in result.clean_parity.items():
        out += clean_parity_gates(twin, parities, gates, confidence, shift)
    for twin, parity in result.adversarial_parity.items():
        gate = estimated_gate(
            f"adversarial-agreement[{twin}]", agreement_intervals([parity.agreement_counts], confidence),
            gates.adversarial_agreement, at_least=True, percent=True,
            describe=f"engine vs {twin} twin on the images attacks crafted on it (adversarial inputs sit near "
            "decision boundaries): agreement",
        )  # fmt: skip
        out.append(gate)
    if result.divergence.ran:
        gate = estimated_gate(
            "divergence", agreement_intervals([result.divergence_counts], confidence), gates.adversarial_agreement,
            at_least=True, percent=True, describe="on divergence-search images the engine agrees with the fp32 "
            "reference on",
        )  # fmt: skip
        out.append(gate)
    for eps in eps_values:
        engine_candidates = result.engine_candidates_at(eps)
        engine = result.worst_at(eps)
        for twin in result.twins:
            twin_candidates = result.twin_candidates_at(twin, eps)
            name = f"survival[{twin}]@{format_eps(eps)}"
            twin_worst = result.twin_worst_at(twin, eps)
            if twin_worst is None or not twin_worst.miou > 0:
                out.append(GateResult.exact(name, False, f"{twin} twin has no worst-case mIoU above 0 at this ε: "
                                            "nothing to compare the engine's survival with (fail closed)"))  # fmt: skip
                continue
            interval = survival_interval(engine_candidates, engine, twin_candidates, twin_worst, confidence)
            gate = estimated_gate(
                name, [interval], gates.survival, at_least=True,
                describe=f"engine worst-case mIoU {engine.miou:.4f} vs {twin} twin {twin_worst.miou:.4f}: "
                "survival ratio",
            )  # fmt: skip
            out.append(gate)
        if gates.min_robust_miou > 0:
            gate = estimated_gate(
                f"robust-miou@{format_eps(eps)}", [miou_interval(engine_candidates, engine, confidence)],
                gates.min_robust_miou, at_least=True, describe="engine worst-case mIoU",
            )  # fmt: skip
            out.append(gate)
    return holm(out, confidence)


def verdict_of(gates: list[GateResult]) -> Outcome:
    """pass when every gate passed (and there is one); fail when one failed; inconclusive when
    none failed but one could not decide at the stated confidence (fails closed)."""
    outcomes = {g.outcome for g in gates}
    if not gates or "fail" in outcomes:
        return "fail"
    return "inconclusive" if "inconclusive" in outcomes else "pass"
