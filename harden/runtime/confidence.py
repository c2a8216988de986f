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
so its influence values are per image, and pixels of one image never count as independent.
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
from dataclasses import dataclass
from typing import Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]

TUNED_AT = 32  # the number of images the sequence is tightest at (ρ is fixed before any data)
MAX_MORE_IMAGES = 100_000  # beyond this, "more images" is reported as not a practical way to decide
METHOD = "asymptotic confidence sequence (Gaussian mixture) on per-image influence values"


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
    """ρ² that makes the sequence tightest at TUNED_AT images (the paper's closed form)."""
    log_term = -2 * math.log(alpha)
    return (log_term + math.log(log_term + 1)) / TUNED_AT


def half_width(images: int, confidence: float, spread: float = 1.0) -> float:
    """The sequence's half-width after `images` images for influence values of standard deviation
    `spread` (∞ before two images: one image says nothing about the spread)."""
    if images < 2:
        return math.inf
    alpha = 1 - confidence
    r2 = _rho_squared(alpha)
    n = float(images)
    return spread * math.sqrt(2 * (n * r2 + 1) / (n * n * r2) * math.log(math.sqrt(n * r2 + 1) / alpha))


def sequence_interval(point: float, influence: np.ndarray, confidence: float) -> Interval:
    """The confidence-sequence interval of a figure `point` with per-image `influence` values
    (mean zero by construction; their spread sets the width)."""
    influence = np.asarray(influence, dtype=np.float64)
    n = len(influence)
    if n == 0 or not math.isfinite(point) or not np.isfinite(influence).all():
        return Interval(point, math.nan, math.nan, confidence, METHOD, n)
    spread = float(np.sqrt(np.mean(influence**2))) if n >= 2 else math.nan
    half = half_width(n, confidence, spread) if n >= 2 else math.inf
    return Interval(point, point - half, point + half, confidence, METHOD, n, spread)


def fail_p_value(interval: Interval, threshold: float, *, at_least: bool) -> float:
    """The anytime-valid p-value of "the figure is on the wrong side of the threshold", from the
    mixture martingale behind the sequence: the interval at confidence 1 − p just touches the
    threshold. 1 when the point is on the right side; Holm's correction across gates uses it."""
    gap = (threshold - interval.point) if at_least else (interval.point - threshold)
    if not math.isfinite(interval.point) or not math.isfinite(interval.low):
        return 1.0 if interval.images > 0 else 0.0
    if gap <= 0 or not interval.images >= 2:
        return 1.0
    if interval.spread <= 0 or not math.isfinite(interval.spread):
        return 0.0
    n, r2 = float(interval.images), _rho_squared(1 - interval.confidence)
    s = n * gap / interval.spread  # the sum of standardised influence values
    log_p = 0.5 * math.log(n * r2 + 1) - r2 * s * s / (2 * (n * r2 + 1))
    return min(1.0, math.exp(log_p))


def agreement_interval(agree: np.ndarray, pixels: np.ndarray, confidence: float) -> Interval:
    """Σagree / Σpixels (`agree`, `pixels`: one entry per image; an image seen under several RAD
    draws is one unit): a ratio of per-image means, whose influence values are the ratio
    estimator's residuals (a_i − p·n_i) / n̄."""
    agree, pixels = np.asarray(agree, dtype=np.float64), np.asarray(pixels, dtype=np.float64)
    total = float(pixels.sum())
    if total <= 0:
        return Interval(math.nan, math.nan, math.nan, confidence, METHOD, len(pixels))
    p = float(agree.sum()) / total
    return sequence_interval(p, (agree - p * pixels) / pixels.mean(), confidence)


def miou_influence(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, np.ndarray]:
    """mIoU of per-image counts (N, K) summed over images, and each image's influence on it
    (the delta method): IoU_k = t̄_k / ū_k moves by (tp_ik·ū_k − t̄_k·u_ik) / ū_k² per image;
    classes with an empty union are left out, as `worst_case.miou` does."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    union = tp + fp + fn
    t_mean, u_mean = tp.mean(0), union.mean(0)
    present = u_mean > 0
    if not present.any():
        return math.nan, np.full(len(tp), math.nan)
    iou = t_mean[present] / u_mean[present]
    per_class = (tp[:, present] * u_mean[present] - t_mean[present] * union[:, present]) / u_mean[present] ** 2
    return float(iou.mean()), per_class.mean(1)


def miou_interval_of(counts: tuple[np.ndarray, np.ndarray, np.ndarray], confidence: float) -> Interval:
    point, influence = miou_influence(*counts)
    return sequence_interval(point, influence, confidence)


def ratio_interval(numerator: tuple[np.ndarray, np.ndarray, np.ndarray],
                   denominator: tuple[np.ndarray, np.ndarray, np.ndarray], confidence: float) -> Interval:  # fmt: skip
    """mIoU(numerator) / mIoU(denominator) on the same images (paired): influence
    (ψ_a − R·ψ_b) / b. Identical counts on both sides give exactly 1 with zero width."""
    a, psi_a = miou_influence(*numerator)
    b, psi_b = miou_influence(*denominator)
    if not b > 0:
        return Interval(math.nan, math.nan, math.nan, confidence, METHOD, len(psi_a))
    ratio = a / b
    return sequence_interval(ratio, (psi_a - ratio * psi_b) / b, confidence)


def absolute_difference_interval(first: tuple[np.ndarray, np.ndarray, np.ndarray],
                                  second: tuple[np.ndarray, np.ndarray, np.ndarray],
                                  confidence: float) -> Interval:  # fmt: skip
    """|mIoU(first) − mIoU(second)| on the same images (paired): the sequence of the signed
    difference, folded at 0 (the absolute value is not smooth there)."""
    a, psi_a = miou_influence(*first)
    b, psi_b = miou_influence(*second)
    signed = sequence_interval(a - b, psi_a - psi_b, confidence)
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
    spread = interval.spread if math.isfinite(interval.spread) else 0.5  # one image: assume a wide spread
    needed = max(interval.images, 2)
    while half_width(needed, interval.confidence, spread) >= gap:
        needed *= 2
        if needed > MAX_MORE_IMAGES + interval.images:
            return None
    low = max(needed // 2, interval.images, 1)
    while low < needed:  # the smallest count whose half-width is below the gap
        middle = (low + needed) // 2
        low, needed = (middle + 1, needed) if half_width(middle, interval.confidence, spread) >= gap else (low, middle)
    return max(1, needed - interval.images)
