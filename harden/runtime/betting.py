"""A nonparametric confidence sequence for the mean of figures in [0, 1] (one per image): the
betting ("capital process") construction of Waudby-Smith & Ramdas (JRSS-B 2024), with a fixed bet
per candidate mean. Exact at every number of images for ANY distribution on [0, 1] — no
asymptotics — but, like every method that is, it cannot certify a mean near 1 from few images (one
image in a thousand could disagree completely). `harden.runtime.confidence` uses it beside the
asymptotic sequence for agreement gates, with a small share of α: it is what lets a handful of
images FAIL a grossly broken engine, which the asymptotic sequence's burn-in would not.

For a candidate mean m, a gambler who bets against "the mean is at least m" grows
K⁻(m) = Π (1 + c·(m − xᵢ)/(1 − m)); against "at most m", K⁺(m) = Π (1 + c·(xᵢ − m)/m). Each is a
non-negative supermartingale under its hypothesis, so by Ville's inequality it reaches 1/a with
probability at most a, at any number of images: every m whose capital reached 1/a is excluded.
"""

from __future__ import annotations

import math

import numpy as np

BET = 0.5  # the fixed share c of the largest safe bet: half, as WSR's "hedged" default

# candidate means: fine near 0 and 1, where the agreement gates' thresholds are
GRID = np.unique(np.concatenate([np.linspace(0, 1, 1001), np.logspace(-6, 0, 600), 1 - np.logspace(-6, 0, 600)]))
GRID = GRID[(GRID > 0) & (GRID < 1)]


def log_capital_below(values: np.ndarray, m: np.ndarray | float) -> np.ndarray:
    """log K⁻(m): the evidence that the mean is below m."""
    m = np.asarray(m, dtype=np.float64)[..., None]
    return np.log1p(BET * (m - values) / (1 - m)).sum(-1)


def log_capital_above(values: np.ndarray, m: np.ndarray | float) -> np.ndarray:
    """log K⁺(m): the evidence that the mean is above m."""
    m = np.asarray(m, dtype=np.float64)[..., None]
    return np.log1p(BET * (values - m) / m).sum(-1)


def bounds(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """(lower, upper) bounds of the mean, each at level 1 − alpha, on the grid and rounded
    outwards (the true bound lies between the last kept and the first excluded candidate)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    if len(values) == 0:
        return 0.0, 1.0
    level = math.log(1 / alpha)
    above = log_capital_above(values, GRID) >= level  # excluded from below: decreasing in m
    below = log_capital_below(values, GRID) >= level  # excluded from above: increasing in m
    low = float(GRID[above].max()) if above.any() else 0.0
    high = float(GRID[below].min()) if below.any() else 1.0
    return low, high


def p_value_below(values: np.ndarray, m: float) -> float:
    """The anytime-valid p-value of "the mean is below m" (1 / the capital against "≥ m")."""
    if not 0 < m < 1:
        return 1.0
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return float(min(1.0, math.exp(-float(log_capital_below(values, m)))))


def p_value_above(values: np.ndarray, m: float) -> float:
    """The anytime-valid p-value of "the mean is above m"."""
    if not 0 < m < 1:
        return 1.0
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return float(min(1.0, math.exp(-float(log_capital_above(values, m)))))
