"""Statistical quality and per-element cost of RAD's counter-based generator (harden-rad-v1).

Quality over 1e6 draws of h/2²⁴ for three matrix shapes: chi-square over 1000 bins (999 degrees
of freedom: mean 999, sd 44.7), lag-1 correlation along keys and along rows, correlation with the
next RAD call (counter + 1) and the next seed, a serial-pairs chi-square on a 32×32 grid (1023
degrees of freedom), and the keep rate for p = 0.5. Cost: the PyTorch keep-mask and the whole
RAD op on a 4×512×512 attention tensor, as ratios to a softmax of the same tensor (median of
several runs). Prints Markdown for docs/benchmarks.md.

    python bench/rad_generator_quality.py
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import torch
from _timing import median_seconds  # bench/ is the script's directory

from harden.ram.counter_rng import GENERATOR, MASK_BITS, hash_numpy, keep_mask_torch
from harden.ram.ops import rad


def quality(rows: int, cols: int) -> str:
    u = hash_numpy(11, 3, rows, cols) / 2.0**MASK_BITS
    hist = np.histogram(u, bins=1000, range=(0.0, 1.0))[0]
    chi = ((hist - u.size / 1000) ** 2 / (u.size / 1000)).sum()
    lag_key = np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]
    lag_row = np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]
    counter = np.corrcoef(u.ravel(), (hash_numpy(11, 4, rows, cols) / 2.0**MASK_BITS).ravel())[0, 1]
    seed = np.corrcoef(u.ravel(), (hash_numpy(12, 3, rows, cols) / 2.0**MASK_BITS).ravel())[0, 1]
    a = (u[:, :-1].ravel() * 32).astype(np.int64)
    b = (u[:, 1:].ravel() * 32).astype(np.int64)
    cells = np.bincount(a * 32 + b, minlength=1024)
    serial = ((cells - a.size / 1024) ** 2 / (a.size / 1024)).sum()
    keep = (u >= 0.5).mean()
    return (
        f"| {rows}×{cols} | {chi:.0f} | {lag_key:+.4f} | {lag_row:+.4f} | {counter:+.4f} | {seed:+.4f} | "
        f"{serial:.0f} | {keep:.4f} |"
    )


def median_ms(fn: Callable[[], object]) -> float:
    return median_seconds(fn, repeats=15, warmup=1) * 1e3


def main() -> None:
    print(f"{date.today()} · {GENERATOR} · 1e6 draws per shape · numpy reference")
    print()
    print(
        "| shape | χ² (999 df) | lag-1 keys | lag-1 rows | next counter | next seed | serial χ² (1023 df) | keep p=½ |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rows, cols in [(1000, 1000), (31250, 32), (16, 62500)]:
        print(quality(rows, cols))
    attention = torch.rand(4, 512, 512).softmax(-1)
    seed = torch.tensor(7)
    softmax = median_ms(lambda: attention.softmax(-1))
    mask = median_ms(lambda: keep_mask_torch(7, 0, attention.shape, 0.5, attention.device))
    full = median_ms(lambda: rad(attention, seed, 0, 0.5))
    print()
    print(
        f"cost on 4×512×512 (torch {torch.__version__}, {torch.get_num_threads()} threads): softmax {softmax:.2f} ms, "
        f"keep-mask {mask:.2f} ms ({mask / softmax:.1f}× softmax), RAD op {full:.2f} ms ({full / softmax:.1f}× softmax)"
    )


if __name__ == "__main__":
    main()
