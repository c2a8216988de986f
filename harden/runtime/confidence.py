"""Confidence intervals for the release gates, and the three outcomes they decide.

Every gate that judges a figure measured on a sample of images decides from an interval at the
run's confidence (default 0.95), never from the point estimate alone:

- **pass** when the whole interval is on the right side of the threshold,
- **fail** when the whole interval is on the wrong side,
- **inconclusive** otherwise — it fails closed (the release does not pass) and says roughly how
  many more images would decide (`images_to_decide`).

Two interval families, both paired over images (the engine and the twin see the same images and
the same RAD draws, so the image-to-image spread cancels in their difference):

- `agreement_interval`: a proportion of pixels (argmax agreement). Pixels of one image are not
  independent, so the interval is Wilson's with the effective sample size of a cluster sample
  (Kish's design effect from the spread of the per-image proportions; never below 1, so with no
  spread it is the plain Wilson interval over pixels).
- `bootstrap_interval`: any figure computed from per-image counts (an mIoU, an mIoU difference, a
  survival ratio): a percentile bootstrap that resamples images, with a FIXED generator seed so
  the interval — and the verdict — are the same on every machine and every run.

The bootstrap keeps each image's worst-case choice (which attack, member and RAD draw) fixed and
resamples images: the interval states the sampling uncertainty of the images, not of the attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20_261_203  # fixed: the same resamples on every machine, so the same verdict
MAX_MORE_IMAGES = 100_000  # beyond this, "more images" is reported as not a practical way to decide


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at `confidence`."""

    point: float
    low: float
    high: float
    confidence: float
    method: str  # "wilson-clustered" or "bootstrap"
    images: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {"point": self.point, "low": self.low, "high": self.high, "confidence": self.confidence,
                "method": self.method, "images": self.images}  # fmt: skip

    def text(self, digits: int = 4, percent: bool = False) -> str:
        if percent:
            return f"{self.point:.{digits - 2}%} [{self.low:.{digits - 2}%}, {self.high:.{digits - 2}%}]"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for `confidence` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def agreement_interval(agree: np.ndarray, pixels: np.ndarray, confidence: float) -> Interval:
    """Wilson interval for Σagree / Σpixels with pixels clustered by image (`agree`, `pixels`:
    one entry per image; an image seen under several RAD draws is one cluster)."""
    agree, pixels = np.asarray(agree, dtype=np.float64), np.asarray(pixels, dtype=np.float64)
    total = float(pixels.sum())
    if total <= 0:
        return Interval(math.nan, math.nan, math.nan, confidence, "wilson-clustered", len(pixels))
    p = float(agree.sum()) / total
    m = len(pixels)
    deff = 1.0
    binomial = p * (1 - p) / total
    if m > 1 and binomial > 0:
        residual = agree - p * pixels  # ratio-estimator residuals of each image
        clustered = m / (m - 1) * float((residual**2).sum()) / total**2
        deff = max(1.0, clustered / binomial)
    low, high = _wilson(p, total / deff, z_value(confidence))
    return Interval(p, low, high, confidence, "wilson-clustered", m)


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], images: int, confidence: float, point: float
) -> Interval:
    """Percentile bootstrap over images. `statistic(weights)` takes a (B, N) matrix of how often
    each image is drawn in each resample and returns the B statistics (NaN where undefined, e.g.
    a ratio over a zero denominator: those resamples are left out)."""
    if images == 0:
        return Interval(math.nan, math.nan, math.nan, confidence, "bootstrap", 0)
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    draws = generator.integers(0, images, size=(BOOTSTRAP_SAMPLES, images))
    weights = np.zeros((BOOTSTRAP_SAMPLES, images), dtype=np.float64)
    np.add.at(weights, (np.arange(BOOTSTRAP_SAMPLES)[:, None], draws), 1.0)
    values = np.asarray(statistic(weights), dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0 or not math.isfinite(point):
        return Interval(point, math.nan, math.nan, confidence, "bootstrap", images)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    # a resampled figure can sit on either side of the full-sample one; the interval holds it
    return Interval(point, float(min(low, point)), float(max(high, point)), confidence, "bootstrap", images)


def miou_of_weighted(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mIoU of each resample: tp/fp/fn (N, K) per image, weights (B, N) → (B,); classes with an
    empty union in a resample are left out of its mean, as `worst_case.miou` does."""
    tp_b, fp_b, fn_b = weights @ tp, weights @ fp, weights @ fn
    union = tp_b + fp_b + fn_b
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp_b / np.maximum(union, 1e-12), np.nan)
        return np.nanmean(np.where(np.isnan(iou).all(1, keepdims=True), np.nan, iou), axis=1)


def decide(interval: Interval, threshold: float, *, at_least: bool) -> Outcome:
    """pass / fail / inconclusive for "figure ≥ threshold" (`at_least`) or "figure ≤ threshold".
    An interval that could not be computed (no images) fails."""
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return "fail"
    good, bad = (interval.low >= threshold, interval.high < threshold) if at_least else (
        interval.high <= threshold, interval.low > threshold)  # fmt: skip
    return "pass" if good else "fail" if bad else "inconclusive"


def images_to_decide(interval: Interval, threshold: float) -> int | None:
    """Roughly how many more images would move the interval off the threshold, if the point
    estimate stays where it is: the half-width shrinks as 1/√n. None when the point sits on the
    threshold (no number of images decides it) or the count is beyond any practical run."""
    half = (interval.high - interval.low) / 2
    gap = abs(interval.point - threshold)
    if not (math.isfinite(half) and math.isfinite(gap)) or gap < 1e-12 or interval.images == 0:
        return None
    needed = math.ceil(interval.images * (half / gap) ** 2)
    more = max(1, needed - interval.images)
    return more if more <= MAX_MORE_IMAGES else None
