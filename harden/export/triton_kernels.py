"""MAS and RAD as Triton kernels: what the TensorRT plugins run (and a GPU fast path).

The arithmetic is the specification's (`harden.ram.counter_rng`, `harden.ram.ops`), so the
kernels reproduce the PyTorch ops: MAS to float rounding, RAD's mask bit for bit. Triton is
imported lazily; tests run these kernels in Triton's interpreter on CPU (TRITON_INTERPRET=1)
and natively on a GPU where there is one.

- `mas_kernel`: one program per attention row: z = k·x/(1+|x|), then a numerically stable
  softmax over the row (the row fits one block: N ≤ 16384 keys).
- `rad_kernel`: one program per block of elements of the (rows, cols) view: x = hr[r] + hc[c]
  from the two lane vectors (computed on the host, as the PyTorch op does), keep iff
  x² mod 2⁴⁴ ≥ θ·2²⁰, out = M·s where kept, else 0.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from harden.ram.counter_rng import MASK_BITS, drop_threshold, keep_scale, lanes_numpy
from harden.ram.ops import check_threshold, mas_gain

MAX_KEYS = 16384  # one row per block


@functools.cache
def _kernels() -> tuple[Any, Any]:
    import triton
    import triton.language as tl

    @triton.jit
    def mas_kernel(x_ptr, out_ptr, cols, gain, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offsets = tl.arange(0, BLOCK)
        inside = offsets < cols
        x = tl.load(x_ptr + row * cols + offsets, mask=inside, other=0.0).to(tl.float32)
        z = x / (1.0 + tl.abs(x)) * gain
        z = tl.where(inside, z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=0))
        tl.store(out_ptr + row * cols + offsets, e / tl.sum(e, axis=0), mask=inside)

    @triton.jit
    def rad_kernel(a_ptr, out_ptr, hr_ptr, hc_ptr, total, cols, low_bits, bound, scale, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < total
        hr = tl.load(hr_ptr + offsets // cols, mask=inside, other=0)
        hc = tl.load(hc_ptr + offsets % cols, mask=inside, other=0)
        x = hr + hc  # < 2³¹
        keep = (x * x) % low_bits >= bound  # x² < 2⁶²: exact in int64; low_bits = 2⁴⁴
        a = tl.load(a_ptr + offsets, mask=inside, other=0.0)
        tl.store(out_ptr + offsets, tl.where(keep, a * scale, 0.0), mask=inside)

    return mas_kernel, rad_kernel


def mas_triton(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """`harden::mas` without a mask: softmax(k·softsign(logits)) over the last dim."""
    cols = logits.shape[-1]
    check_threshold(threshold, cols)
    if cols > MAX_KEYS:
        raise ValueError(f"the MAS kernel handles rows of up to {MAX_KEYS} keys, got {cols}")
    x = logits.contiguous()
    out = torch.empty_like(x)
    rows = x.numel() // cols
    gain = float(np.float32(mas_gain(threshold, cols)))
    _kernels()[0][(rows,)](x, out, cols, gain, BLOCK=max(16, 1 << math.ceil(math.log2(cols))))
    return out


def rad_triton(attention: torch.Tensor, seed: int, counter: int, p: float, block: int = 1024) -> torch.Tensor:
    """`harden::rad`: the same mask as the PyTorch op for the same (seed, counter, shape)."""
    a = attention.contiguous()
    cols = a.shape[-1]
    rows = a.numel() // cols
    hr, hc = (torch.from_numpy(lane).to(a.device) for lane in lanes_numpy(seed, counter, rows, cols))
    out = torch.empty_like(a)
    bound = drop_threshold(p) << 20
    grid = (math.ceil(a.numel() / block),)
    low_bits = 2 ** (20 + MASK_BITS)
    _kernels()[1][grid](a, out, hr, hc, a.numel(), cols, low_bits, bound, keep_scale(p), BLOCK=block)
    return out
