"""Images to decide and error rates of verify's gate rule, before and after issue 45, simulated.

Each simulated verify run draws per-image figures batch by batch and judges the gate at every
look its rule allows:

- **today's rule** (commit ca573c9): looks at 1, 2, 4, … batches and at the budget, each judged at
  confidence 1 − α/K over the K planned looks (Bonferroni); agreements by Wilson's interval with
  Kish's design effect, mIoU ratios by a percentile bootstrap over images (2,000 resamples);
- **the new rule** (`harden.runtime.confidence`): a look after every batch, each judged by the
  asymptotic confidence sequence on per-image influence values, at the stated level.

Two gate shapes, as verify has them:

- *agreement*: each image's share of agreeing pixels (64×128 pixels) drawn from a Beta around the
  population mean μ; the gate asks μ ≥ τ. Cases put μ on τ (the hardest), and one and two
  "spreads" either side, for the fp32 adversarial gate (τ = 0.99) and the int8 clean gate
  (τ = 0.90).
- *survival*: per image and class (3 classes), an engine's and a twin's true-positive, false-positive
  and false-negative counts, the engine losing a fraction of the twin's true positives that varies
  from image to image (most images lose little, a few much); the gate asks mIoU(engine) /
  mIoU(twin) ≥ τ. The true ratio is measured on 200,000 images first, and the thresholds τ are
  placed on it and 0.01 and 0.02 either side.

A run *decides wrongly* when it passes a gate whose population value is below the threshold, or
fails one whose value is at or above it; with the value ON the threshold the worse of its pass and
fail rates is counted (its pass rate is the limit of the wrong-pass rate just below). Runs that
reach the budget undecided count the budget as their images. "resumed" runs, after reaching the
first budget, are extended to twice the budget with looks continuing (today's rule: a new plan
over the larger budget, its verdicts added to the first run's; the new rule: more looks).

    python bench/sequential_gates.py [--runs 10000] [--batch 8] [--budget 64] [--seed 0]

Prints Markdown for docs/benchmarks.md. About 6 minutes on 2 cores at --runs 10000 (the bootstrap of
today's survival rule is most of it; --survival-runs sets its count separately).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from statistics import NormalDist

import numpy as np

from harden.runtime.confidence import agreement_interval, decide, ratio_interval

PIXELS = 64 * 128
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 2000, 20_261_203  # today's rule, as it was


# ---- today's rule (harden/runtime/confidence.py at ca573c9), kept here to compare against ----
def _old_agreement(agree: np.ndarray, pixels: np.ndarray, confidence: float) -> tuple[float, float]:
    total = float(pixels.sum())
    p = float(agree.sum()) / total
    m, deff = len(pixels), 1.0
    binomial = p * (1 - p) / total
    if m > 1 and binomial > 0:
        residual = agree - p * pixels
        deff = max(1.0, m / (m - 1) * float((residual**2).sum()) / total**2 / binomial)
    n, z = total / deff, NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _old_miou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, weights: np.ndarray) -> np.ndarray:
    tp_b, fp_b, fn_b = weights @ tp, weights @ fp, weights @ fn
    union = tp_b + fp_b + fn_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(np.where(union > 0, tp_b / np.maximum(union, 1e-12), np.nan), axis=1)


def _old_survival(engine: tuple, twin: tuple, confidence: float) -> tuple[float, float]:  # type: ignore[type-arg]
    n = len(engine[0])
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    draws = generator.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    weights = np.zeros((BOOTSTRAP_SAMPLES, n))
    np.add.at(weights, (np.arange(BOOTSTRAP_SAMPLES)[:, None], draws), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = _old_miou(*engine, weights) / _old_miou(*twin, weights)
    ones = np.ones((1, n))
    point = float((_old_miou(*engine, ones) / _old_miou(*twin, ones))[0])
    values = values[np.isfinite(values)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return min(float(low), point), max(float(high), point)


def _outcome(low: float, high: float, threshold: float) -> str:
    return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"


# ---- the two rules' look schedules ----
def old_looks(batch: int, budget: int) -> list[int]:
    looks, n = [], batch
    while n < budget:
        looks.append(n)
        n *= 2
    return [*looks, budget]


def new_looks(batch: int, budget: int) -> list[int]:
    return [*range(batch, budget, batch), budget]


@dataclass
class Tally:
    images: list[int]
    passed: int = 0
    failed: int = 0

    def add(self, images: int, outcome: str) -> None:
        self.images.append(images)
        self.passed += outcome == "pass"
        self.failed += outcome == "fail"

    @property
    def decided(self) -> int:
        return self.passed + self.failed

    def wrong(self, truth: float, threshold: float) -> int:
        """Wrong verdicts: a pass below the threshold, a fail at or above it. ON the threshold the
        worse of the two is counted: the pass rate there is the limit of the wrong-pass rate of
        populations just below it."""
        if abs(truth - threshold) < 1e-12:
            return max(self.passed, self.failed)
        return self.passed if truth < threshold else self.failed


def sequential(judge: Callable[[int, float], str], looks: list[int], level: float) -> tuple[int, str]:
    """The first look that decides (or the last look, undecided)."""
    for n in looks:
        outcome = judge(n, level)
        if outcome != "inconclusive":
            return n, outcome
    return looks[-1], "inconclusive"


def agreement_case(mean: float, spread: float, images: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-image agreeing pixels: each image's share from a Beta(mean, spread), then binomial pixels."""
    k = mean * (1 - mean) / spread**2 - 1
    shares = rng.beta(mean * k, (1 - mean) * k, size=images)
    return rng.binomial(PIXELS, shares), np.full(images, PIXELS)


def survival_case(loss: float, images: int, rng: np.random.Generator) -> tuple[tuple, tuple]:  # type: ignore[type-arg]
    """Twin counts per image and class; the engine loses a varying share of the twin's true positives."""
    area = rng.integers(400, 3000, size=(images, 3)).astype(float)
    tp_twin = np.floor(area * rng.uniform(0.3, 0.7, size=(images, 3)))
    fn_twin = area - tp_twin
    fp_twin = np.floor(area * rng.uniform(0.1, 0.4, size=(images, 3)))
    lost = np.floor(tp_twin * np.clip(rng.normal(loss, 0.08, size=(images, 3)), 0, 1))
    engine = (tp_twin - lost, fp_twin + lost, fn_twin + lost)
    return engine, (tp_twin, fp_twin, fn_twin)


def run_agreement(args: argparse.Namespace, threshold: float, spread: float, offset: float, resumed: bool) -> dict:  # type: ignore[type-arg]
    mean = threshold + offset * spread / math.sqrt(args.budget)
    rng = np.random.default_rng(args.seed)
    budget = args.budget * (2 if resumed else 1)
    old, new = Tally([]), Tally([])
    for _ in range(args.runs):
        agree, pixels = agreement_case(mean, spread, budget, rng)

        def judge_old(n: int, level: float, agree: np.ndarray = agree, pixels: np.ndarray = pixels) -> str:
            return _outcome(*_old_agreement(agree[:n], pixels[:n], level), threshold)

        def judge_new(n: int, level: float, agree: np.ndarray = agree, pixels: np.ndarray = pixels) -> str:
            return decide(agreement_interval(agree[:n], pixels[:n], level), threshold, at_least=True)

        _tally_both(args, old, new, judge_old, judge_new, resumed)
    return {"old": old, "new": new, "mean": mean, "threshold": threshold}


def _tally_both(args: argparse.Namespace, old: Tally, new: Tally, judge_old: Callable[[int, float], str],
                judge_new: Callable[[int, float], str], resumed: bool) -> None:  # fmt: skip
    alpha = 1 - args.level
    first = old_looks(args.batch, args.budget)
    n, outcome = sequential(judge_old, first, 1 - alpha / len(first))
    if resumed:  # the finished run extended to twice the budget: a new plan, looked at again
        second = old_looks(args.batch, 2 * args.budget)
        n2, outcome2 = sequential(judge_old, second, 1 - alpha / len(second))
        # a verdict the first run reached stays on the record; the extension adds its own
        outcome = outcome if outcome2 == "inconclusive" else outcome2 if outcome == "inconclusive" else (
            outcome if outcome == outcome2 else "pass")  # fmt: skip
        n = max(n, n2)
    old.add(n, outcome)
    looks = new_looks(args.batch, args.budget * (2 if resumed else 1))
    n, outcome = sequential(judge_new, looks, args.level)
    new.add(n, outcome)


def run_survival(args: argparse.Namespace, loss: float, truth: float, threshold: float, resumed: bool) -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(args.seed)
    budget = args.budget * (2 if resumed else 1)
    old, new = Tally([]), Tally([])
    for _ in range(args.survival_runs):
        engine, twin = survival_case(loss, budget, rng)

        def cut(counts: tuple, n: int) -> tuple:  # type: ignore[type-arg]
            return tuple(c[:n] for c in counts)

        def judge_old(n: int, level: float, engine: tuple = engine, twin: tuple = twin) -> str:  # type: ignore[type-arg]
            return _outcome(*_old_survival(cut(engine, n), cut(twin, n), level), threshold)

        def judge_new(n: int, level: float, engine: tuple = engine, twin: tuple = twin) -> str:  # type: ignore[type-arg]
            return decide(ratio_interval(cut(engine, n), cut(twin, n), level), threshold, at_least=True)

        _tally_both(args, old, new, judge_old, judge_new, resumed)
    return {"old": old, "new": new, "mean": truth, "threshold": threshold}


def true_ratio(loss: float) -> float:
    engine, twin = survival_case(loss, 200_000, np.random.default_rng(12345))
    ones = np.ones((1, 200_000))
    return float((_old_miou(*engine, ones) / _old_miou(*twin, ones))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--survival-runs", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"Simulated {args.runs} runs per agreement case and {args.survival_runs} per survival case; batch "
          f"{args.batch}, budget {args.budget} images, α = {1 - args.level:.2f} ({date.today()}; "
          f"`python bench/sequential_gates.py --runs {args.runs} --survival-runs {args.survival_runs}`)\n")  # fmt: skip
    print("| gate | population value | run | images to decide, today → new (mean) | decided, today → new "
          "| wrong verdicts, today → new |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    totals = {"old": [], "new": []}  # type: ignore[var-annotation]
    worst = {"old": 0.0, "new": 0.0}
    cases: list[tuple[str, Callable[[bool], dict]]] = []  # type: ignore[type-arg]
    for threshold, spread in ((0.99, 0.01), (0.90, 0.03)):
        for offset in (-6.0, -3.0, 0.0, 3.0, 6.0):
            name = f"agreement ≥ {threshold}"
            cases.append((name, lambda resumed, t=threshold, s=spread, o=offset: run_agreement(args, t, s, o, resumed)))
    ratio = true_ratio(0.02)
    for offset in (-0.02, -0.01, 0.0, 0.01, 0.02):  # thresholds around the engine's true ratio
        threshold = round(ratio + offset, 4) if offset else ratio
        cases.append((f"survival ≥ {threshold:.4f}", lambda resumed, t=threshold: run_survival(args, 0.02, ratio, t,
                                                                                             resumed)))  # fmt: skip
    for name, case in cases:
        for resumed in (False, True):
            figures = case(resumed)
            old, new = figures["old"], figures["new"]
            runs = len(old.images)
            if not resumed:
                totals["old"].append(np.mean(old.images))
                totals["new"].append(np.mean(new.images))
            truth, threshold = figures["mean"], figures["threshold"]
            wrong_old, wrong_new = old.wrong(truth, threshold) / runs, new.wrong(truth, threshold) / runs
            worst["old"], worst["new"] = max(worst["old"], wrong_old), max(worst["new"], wrong_new)
            where = "on the threshold" if abs(truth - threshold) < 1e-12 else f"{truth:.4f}"
            print(f"| {name} | {where} | {'resumed ×2' if resumed else 'one budget'} | "
                  f"{np.mean(old.images):.1f} → {np.mean(new.images):.1f} | {old.decided / runs:.1%} → "
                  f"{new.decided / runs:.1%} | {wrong_old:.2%} → {wrong_new:.2%} |")  # fmt: skip
    old_mean, new_mean = float(np.mean(totals["old"])), float(np.mean(totals["new"]))
    print(f"\nMean images to decide over the one-budget cases: today {old_mean:.1f}, new {new_mean:.1f} "
          f"({(new_mean - old_mean) / old_mean:+.0%}); worst wrong-verdict rate: today {worst['old']:.2%}, new "
          f"{worst['new']:.2%} (stated α {1 - args.level:.0%}). {time.perf_counter() - started:.0f} s.")  # fmt: skip


if __name__ == "__main__":
    main()
