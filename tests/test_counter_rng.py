"""RAD's counter-based generator: test vectors, implementations agree, statistical quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harden.ram import counter_rng as rng


@pytest.mark.parametrize(("args", "expected"), rng.TEST_VECTORS)
def test_numpy_reference_reproduces_published_vectors(
    args: tuple[int, int, int, int], expected: tuple[int, ...]
) -> None:
    assert tuple(int(v) for v in rng.hash_numpy(*args).ravel()[:8]) == expected


@pytest.mark.parametrize(("args", "expected"), rng.TEST_VECTORS)
def test_torch_reproduces_published_vectors(args: tuple[int, int, int, int], expected: tuple[int, ...]) -> None:
    seed, counter, rows, cols = args
    h = rng.hash_torch(seed, counter, rows, cols, torch.device("cpu"))
    assert tuple(h.ravel()[:8].tolist()) == expected


@pytest.mark.parametrize(("seed", "counter", "shape"), [(0, 0, (2, 3, 17, 9)), (-123456789, 41, (1, 1, 5, 300))])
def test_torch_and_numpy_masks_identical(seed: int, counter: int, shape: tuple[int, ...]) -> None:
    for p in (0.0, 0.1, 0.3, 0.5, 0.9):
        expected = rng.keep_mask_numpy(seed, counter, shape, p)
        got = rng.keep_mask_torch(seed, counter, torch.Size(shape), p, torch.device("cpu"))
        np.testing.assert_array_equal(got.numpy(), expected)


def test_threshold_and_scale_are_exact() -> None:
    assert rng.drop_threshold(0.0) == 0
    assert rng.drop_threshold(0.5) == 2**23
    assert rng.keep_scale(0.5) == 2.0
    assert rng.keep_scale(0.0) == 1.0
    # 0.3 is not a float32: θ comes from float32(0.3), so every implementation agrees.
    assert rng.drop_threshold(0.3) == int(np.floor(np.float64(np.float32(0.3)) * 2**24))
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="drop probability"):
            rng.drop_threshold(bad)


def test_counter_and_sizes_are_range_checked() -> None:
    with pytest.raises(ValueError, match="counter"):
        rng.stream_keys(0, rng.MAX_COUNTER)
    with pytest.raises(ValueError, match="counter"):
        rng.stream_keys(0, -1)
    with pytest.raises(ValueError, match="rows, cols"):
        rng.hash_numpy(0, 0, 2**31, 1)


def test_seeds_and_counters_give_different_streams() -> None:
    base = rng.hash_numpy(0, 0, 4, 64)
    for seed, counter in [(1, 0), (0, 1), (1, 1), (-1, 0), (2**40, 0)]:
        other = rng.hash_numpy(seed, counter, 4, 64)
        assert (other == base).mean() < 0.01, (seed, counter)


def _u(seed: int, counter: int, rows: int, cols: int) -> np.ndarray:
    return rng.hash_numpy(seed, counter, rows, cols) / 2.0**rng.MASK_BITS


@pytest.mark.parametrize(("rows", "cols"), [(1000, 1000), (31250, 32), (16, 62500)])
def test_statistical_quality_over_a_million_draws(rows: int, cols: int) -> None:
    """Chi-square and correlations at the level of true randomness (thresholds: p ≈ 1e-4).

    For 1e6 uniform draws the chi-square over 1000 bins has mean 999 and sd 44.7 and a
    correlation has sd 0.001; the bounds below sit near 4 sd.
    """
    u = _u(11, 3, rows, cols)
    hist = np.histogram(u, bins=1000, range=(0.0, 1.0))[0]
    expected = u.size / 1000
    assert ((hist - expected) ** 2 / expected).sum() < 1180
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.005  # lag 1 along keys
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.005  # lag 1 along rows
    assert abs(np.corrcoef(u.ravel(), _u(11, 4, rows, cols).ravel())[0, 1]) < 0.005  # next RAD call
    assert abs(np.corrcoef(u.ravel(), _u(12, 3, rows, cols).ravel())[0, 1]) < 0.005  # next seed
    # serial pairs along keys, 32×32 cells: chi-square with 1023 degrees of freedom
    a = (u[:, :-1].ravel() * 32).astype(np.int64)
    b = (u[:, 1:].ravel() * 32).astype(np.int64)
    cells = np.bincount(a * 32 + b, minlength=1024)
    expected = a.size / 1024
    assert ((cells - expected) ** 2 / expected).sum() < 1200
    for p in (0.1, 0.5, 0.9):
        keep = rng.keep_mask_numpy(11, 3, (rows, cols), p)
        assert abs(keep.mean() - (1 - p)) < 0.002
