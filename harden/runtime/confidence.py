"""Confidence sequences for the release gates, and the three outcomes they decide.

Every gate that judges a figure measured on a sample of images decides from an interval at the
run's confidence (default 0.95), never from the point estimate alone:

- **pass** when the whole interval is on the right side of the threshold,
- **fail** when the whole interval is on the wrong side,
- **inconclusive** otherwise — it fails closed (the release does not pass) and says roughly how
  many more images would decide (`images_to_decide`).

The interval is one member of a **confidence sequence**: it covers the figure's population value
at every number of images at once, so `--images auto` may look after every batch, and a resumed
or extended run may look again, without inflating the error rate (docs/verdicts.md §2). It is
the Gaussian-mixture *asymptotic confidence sequence* of Waudby-Smith, Arbour, Sinha, Kennedy &
Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist.
2024), the time-uniform analogue of a CLT interval:

    figure ± σ̂ · √( 2(nρ² + 1) / (n²ρ²) · ln(√(nρ² + 1) / α) )

over n images, where σ̂ is the standard deviation of the images' *influence values* on the figure
(the delta method: how much each image moves it). The **image is the unit**: every figure — a
share of pixels, an mIoU, an mIoU difference or ratio — is a smooth function of per-image counts,
so its influence values are per image (the ratio estimator's residuals for a share of pixels, the
jackknife for mIoU figures), and pixels of one image never count as independent.
ρ is fixed before any data (tightest at `TUNED_AT` images), so the sequence is the same for any
plan, look or budget.

Why not a nonparametric betting sequence (Waudby-Smith & Ramdas, JRSS-B 2024)? For a mean of
[0, 1] figures it is exact at every n, but it cannot certify a mean ≥ τ before
n ≥ ln(1/α) / (1 − τ) images even when every image agrees perfectly — 2,996 images for the fp32
clean-agreement gate (0.999) at α = 0.05 — because one image in a thousand could disagree
completely. The asymptotic sequence shares the CLT's blind spot (a failure rarer than about one
image in n is not seen) and nothing worse; bench/sequential_gates.py measures its error rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Literal

import numpy as np

from harden.runtime import betting

Outcome = Literal["pass", "fail", "inconclusive"]

# Below MIN_IMAGES images a spread estimated from the images is too unreliable for the asymptotic
# sequence: with per-image agreements skewed as adversarial ones are (most near 1, a few far
# below), a sequence deciding from 16 images passed a gate sitting on its threshold in 6.9 % of
# 3,000 simulated runs, from 24 in 5.2 %, from 32 in 4.6 % (bench/sequential_gates.py; α = 5 %).
# Until then the asymptotic sequence decides nothing — not even a figure that is the same on every
# image: an engine that computes its twin exactly on one CPU and to rounding on another would
# otherwise pass on the first and stay undecided on the second (the verdict would follow the ISA).
# A delayed start keeps the sequence valid (Bibaut, Kallus & Lindon 2024).
MIN_IMAGES = 32
TUNED_AT = 32  # the number of images the sequence is tightest at (ρ is fixed before any data)
MAX_MORE_IMAGES = 100_000  # beyond this, "more images" is reported as not a practical way to decide
METHOD = "asymptotic confidence sequence (Gaussian mixture) on per-image influence values"
# Agreement gates also carry a nonparametric betting sequence (harden.runtime.betting); α is
# split between the two (a union bound), the asymptotic one taking ASYMPTOTIC_SHARE of it.
ASYMPTOTIC_SHARE = 0.9


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at `confidence`; `spread` is the standard
    deviation of the per-image influence values the width came from (0: every image alike)."""

    point: float
    low: float
    high: float
    confidence: float
    method: str
    images: int
    spread: float = math.nan
    # per-image shares behind a betting sequence (agreement gates with equal pixels per image)
    shares: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON has no infinity: an unbounded side (one image) is null."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {"point": finite(self.point), "low": finite(self.low), "high": finite(self.high),
                "confidence": self.confidence, "method": self.method, "images": self.images}  # fmt: skip

    def text(self, digits: int = 4, percent: bool = False) -> str:
        if percent:
            return f"{self.point:.{digits - 2}%} [{self.low:.{digits - 2}%}, {self.high:.{digits - 2}%}]"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _rho_squared(alpha: float) -> float:
    """ρ² that makes the one-sided boundary tightest near TUNED_AT images (the closed form of
    Waudby-Smith et al. for the two-sided boundary at 2α, which the one-sided one approximates)."""
    log_term = -2 * math.log(2 * alpha)
    return (log_term + math.log(log_term + 1)) / TUNED_AT


def half_width(images: int, confidence: float, spread: float = 1.0) -> float:
    """The distance from the figure to each of its one-sided bounds after `images` images, for
    influence values of standard deviation `spread` (∞ before two images: one image says nothing
    about the spread). The one-sided normal-mixture boundary (Howard, Ramdas, McAuliffe & Sekhon,
    Ann. Statist. 2021, eq. 14): a sum of n standardised values stays below
    √((n + 1/ρ²) · 2 ln(√(nρ² + 1) / (2α) + 1)) at every n with probability ≥ 1 − α."""
    if images < 2:
        return math.inf
    alpha = ASYMPTOTIC_SHARE * (1 - confidence)
    r2 = _rho_squared(alpha)
    n = float(images)
    boundary = math.sqrt((n + 1 / r2) * 2 * math.log(math.sqrt(n * r2 + 1) / (2 * alpha) + 1))
    return spread * boundary / n


def small_sample_spread(influence: np.ndarray, confidence: float) -> float:
    """The influence values' standard deviation, with Bessel's n − 1 and Student's t in place of the
    normal quantile (t_ν / z at the one-sided level, ν = n − 1; Cornish–Fisher's expansion of t):
    a spread estimated from a few images is often too small, and the asymptotic sequence takes it
    as known. bench/sequential_gates.py measured the wrong-pass rate at the threshold with and
    without it (docs/benchmarks.md)."""
    n = len(influence)
    sd = float(np.sqrt(np.sum(influence**2) / (n - 1)))
    z, nu = NormalDist().inv_cdf(confidence), n - 1
    t = z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)
    t += (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * nu**3)
    return sd * t / z


def sequence_interval(
    point: float, influence: np.ndarray, confidence: float, bounds: tuple[float, float] = (0.0, 1.0)
) -> Interval:
    """The confidence-sequence interval of a figure `point` with per-image `influence` values
    (mean zero by construction; their spread sets the width), cut to the figure's own range
    `bounds` (a share or an mIoU lies in [0, 1]; a ratio is ≥ 0)."""
    influence = np.asarray(influence, dtype=np.float64)
    n = len(influence)
    if n == 1 and math.isfinite(point):  # one image: no spread to speak of, the figure's whole range
        return Interval(point, bounds[0], bounds[1], confidence, METHOD, n)
    if n == 0 or not math.isfinite(point) or not np.isfinite(influence).all():
        return Interval(point, math.nan, math.nan, confidence, METHOD, n)
    spread = small_sample_spread(influence, confidence) if n >= 2 else math.nan
    half = half_width(n, confidence, spread) if n >= 2 else math.inf
    if n < MIN_IMAGES:  # too few images to trust a spread, even a zero one: the burn-in decides nothing
        half = math.inf
    low, high = max(bounds[0], point - half), min(bounds[1], point + half)
    return Interval(point, low, high, confidence, METHOD, n, spread)


def fail_p_value(interval: Interval, threshold: float, *, at_least: bool) -> float:
    """The anytime-valid p-value of "the figure is on the wrong side of the threshold": the
    smallest α at which the interval's sequences exclude the threshold on the pass side. 1 when
    the point is on the right side; Holm's correction across gates uses it."""
    gap = (threshold - interval.point) if at_least else (interval.point - threshold)
    if not math.isfinite(interval.point) or math.isnan(interval.low):
        return 1.0 if interval.images > 0 else 0.0
    if gap <= 0:
        return 1.0
    p = 1.0
    if interval.shares is not None:
        below = betting.p_value_below if at_least else betting.p_value_above
        p = min(p, below(interval.shares, threshold) / (1 - ASYMPTOTIC_SHARE))
    if interval.images < MIN_IMAGES:
        return p
    if interval.spread <= 0:
        return 0.0
    n, r2 = float(interval.images), _rho_squared(ASYMPTOTIC_SHARE * (1 - interval.confidence))
    s = n * gap / interval.spread  # the sum of standardised influence values
    exponent = r2 * s * s / (2 * (n * r2 + 1))  # the boundary's inverse: the α at which it touches s
    if exponent > 700:
        return 0.0
    return min(p, math.sqrt(n * r2 + 1) / (2 * math.expm1(exponent)) / ASYMPTOTIC_SHARE)


def agreement_interval(agree: np.ndarray, pixels: np.ndarray, confidence: float) -> Interval:
    """Σagree / Σpixels (`agree`, `pixels`: one entry per image; an image seen under several RAD
    draws is one unit): a ratio of per-image means, whose influence values are the ratio
    estimator's residuals (a_i − p·n_i) / n̄."""
    agree, pixels = np.asarray(agree, dtype=np.float64), np.asarray(pixels, dtype=np.float64)
    total = float(pixels.sum())
    if total <= 0:
        return Interval(math.nan, math.nan, math.nan, confidence, METHOD, len(pixels))
    p = float(agree.sum()) / total
    asymptotic = sequence_interval(p, (agree - p * pixels) / pixels.mean(), confidence)
    if not (pixels == pixels[0]).all() or math.isnan(asymptotic.low):
        return asymptotic  # shares of unequal images do not average to the pooled figure
    shares = agree / pixels
    low, high = betting.bounds(shares, (1 - ASYMPTOTIC_SHARE) * (1 - confidence))
    return replace(asymptotic, low=max(asymptotic.low, min(low, p)), high=min(asymptotic.high, max(high, p)),
                   shares=shares)  # fmt: skip


Counts = tuple[np.ndarray, np.ndarray, np.ndarray]  # per-image tp, fp, fn: (N, K) each


def leave_one_out_miou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, np.ndarray]:
    """mIoU of per-image counts summed over images, and the N mIoUs with one image left out;
    classes with an empty union are left out of a mean, as `worst_case.miou` does."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    union = tp + fp + fn

    def miou(t: np.ndarray, u: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(u > 0, t / np.where(u > 0, u, 1.0), np.nan)
            present = np.asarray((u > 0).any(-1))
            return np.where(present, np.nanmean(np.where(present[..., None], iou, 0.0), axis=-1), np.nan)

    full = float(miou(tp.sum(0), union.sum(0)))
    return full, miou(tp.sum(0) - tp, union.sum(0) - union)


def jackknife_influence(full: float, left_out: np.ndarray) -> np.ndarray:
    """Each image's influence on a figure from the figure with that image left out (the
    jackknife): (n − 1)(mean of the leave-one-out figures − the one without image i). Unlike the
    delta method it keeps the figure's curvature, which matters on few images."""
    n = len(left_out)
    if n < 2 or not math.isfinite(full):
        return np.full(n, math.nan)
    return (n - 1) * (left_out.mean() - left_out)


def miou_interval_of(counts: Counts, confidence: float) -> Interval:
    point, left_out = leave_one_out_miou(*counts)
    return sequence_interval(point, jackknife_influence(point, left_out), confidence)


def ratio_interval(numerator: Counts, denominator: Counts, confidence: float) -> Interval:
    """mIoU(numerator) / mIoU(denominator) on the same images (paired: each left-out image leaves
    both sides). Identical counts on both sides give exactly 1 with zero width."""
    a, a_out = leave_one_out_miou(*numerator)
    b, b_out = leave_one_out_miou(*denominator)
    if not b > 0:
        return Interval(math.nan, math.nan, math.nan, confidence, METHOD, len(a_out))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_out = a_out / b_out
    return sequence_interval(a / b, jackknife_influence(a / b, ratio_out), confidence, (0.0, math.inf))


def absolute_difference_interval(first: Counts, second: Counts, confidence: float) -> Interval:
    """|mIoU(first) − mIoU(second)| on the same images (paired): the sequence of the signed
    difference, folded at 0 (the absolute value is not smooth there)."""
    a, a_out = leave_one_out_miou(*first)
    b, b_out = leave_one_out_miou(*second)
    signed = sequence_interval(a - b, jackknife_influence(a - b, a_out - b_out), confidence, (-1.0, 1.0))
    if not math.isfinite(signed.low):
        return Interval(abs(a - b), signed.low, signed.high, confidence, METHOD, signed.images, signed.spread)
    low = 0.0 if signed.low <= 0 <= signed.high else min(abs(signed.low), abs(signed.high))
    high = max(abs(signed.low), abs(signed.high))
    return Interval(abs(a - b), low, high, confidence, METHOD, signed.images, signed.spread)


def decide(interval: Interval, threshold: float, *, at_least: bool) -> Outcome:
    """pass / fail / inconclusive for "figure ≥ threshold" (`at_least`) or "figure ≤ threshold".
    An interval that could not be computed (no images, no figure) fails; one that is unbounded
    (a single image) is inconclusive."""
    if math.isnan(interval.low) or math.isnan(interval.high):
        return "fail"
    good, bad = (interval.low >= threshold, interval.high < threshold) if at_least else (
        interval.high <= threshold, interval.low > threshold)  # fmt: skip
    return "pass" if good else "fail" if bad else "inconclusive"


def images_to_decide(interval: Interval, threshold: float) -> int | None:
    """Roughly how many more images would move the interval off the threshold, if the point
    estimate and the spread stay where they are. None when the point sits on the threshold (no
    number of images decides it) or the count is beyond any practical run."""
    gap = abs(interval.point - threshold)
    if not math.isfinite(gap) or gap < 1e-12 or interval.images == 0:
        return None
    if not math.isfinite(interval.spread):  # one image: no spread yet, and the burn-in to come
        return max(1, MIN_IMAGES - interval.images)
    spread = interval.spread
    needed = max(interval.images, MIN_IMAGES)  # nothing decides before the burn-in is over
    while half_width(needed, interval.confidence, spread) >= gap:
        needed *= 2
        if needed > MAX_MORE_IMAGES + interval.images:
            return None
    low = max(needed // 2, interval.images, MIN_IMAGES)
    while low < needed:  # the smallest count whose half-width is below the gap
        middle = (low + needed) // 2
        low, needed = (middle + 1, needed) if half_width(middle, interval.confidence, spread) >= gap else (low, middle)
    return max(1, needed - interval.images)
