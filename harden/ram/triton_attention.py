"""RobustAttention (MAS + RAD) as fused Triton kernels: flash-attention tiles, no N×N matrix.

    out = RAD(MAS(scale·q·kᵀ)) · v        q (B, H, Nq, d), k and v (B, H, Nk, d)

The forward kernel walks the keys in tiles with an online softmax (Dao et al., FlashAttention
2): per query row it keeps the running maximum m, the running sum l of exp(z − m) and the
unnormalised output. MAS only changes the logits, z = k_MAS·softsign(a) (DESIGN.md §3). RAD
multiplies the normalised weight p/l by keep·s; since l does not depend on the mask, the kernel
drops elements of p as it accumulates p·v and divides by l once at the end: exactly RAD(M)·V.
The keep mask is the one of `harden.ram.counter_rng` (row r = flat index of (b, h, query),
column c = key): x = hr[r] + hc[c], keep iff x² mod 2⁴⁴ ≥ θ·2²⁰, so it equals `harden::rad`'s bit
for bit. The kernels derive the keys and lanes from the seed tensor on the device (a few integer
operations per row and per key tile), so a call never waits for the host, and the mask is
recomputed in the backward pass, never stored.

The backward pass recomputes the tiles from q, k and the saved log-sum-exp L = m + log l:
    D = P·keep·s with P = exp(z − L)                 dV = Dᵀ·dO
    dP = (dO·Vᵀ)·keep·s                               dZ = P ∘ (dP − Δ), Δ_i = dO_i·out_i
    dA = dZ · k_MAS/(1 + |a|)² (MAS) or dZ            dQ = scale·dA·K, dK = scale·dAᵀ·Q
(Δ is the softmax term Σ_j P_ij dP_ij, which equals dO_i·out_i because out = D·V.) One kernel
computes dK and dV per key tile, another dQ per query tile: no atomics, deterministic.

Triton is imported lazily. On a GPU the kernels run natively; on CPU they run in Triton's
interpreter (TRITON_INTERPRET=1, set before triton is imported), which is how the tests check
them against the PyTorch ops.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harden.ram.counter_rng import drop_threshold, keep_scale, stream_keys
from harden.ram.ops import check_threshold, mas_gain


def triton_available() -> bool:
    """Whether Triton is installed (the fused kernels' only requirement besides a GPU)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (slowly): how tests run without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class RadDraw:
    """One RAD call: the kernels derive its keys and lanes from the seed on the device.

    Args:
        seed: 0-d int64 tensor on the kernels' device (read there: no host synchronisation).
        counter: the call's index in the forward pass, in [0, 2³¹ − 1).
        bound: θ·2²⁰; an element is kept iff x² mod 2⁴⁴ ≥ bound.
        scale: the float32 factor applied to kept weights.
    """

    seed: torch.Tensor
    counter: int
    bound: int
    scale: float

    @classmethod
    def of(cls, seed: torch.Tensor, counter: int, p: float) -> RadDraw:
        stream_keys(0, counter)  # refuses a counter out of range, as every implementation does
        return cls(seed.reshape(()).to(torch.int64), counter, drop_threshold(p) << 20, keep_scale(p))


@dataclass(frozen=True)
class RamArithmetic:
    """What one fused call computes besides q·kᵀ·v.

    Args:
        scale: logit scale (1/√d by default, divided by RAM's temperature if any).
        mas_gain: k of MAS, ½·log((Nk−1)·T/(1−T)); None for a plain softmax.
        rad: the RAD draw; None when nothing is dropped.
    """

    scale: float
    mas_gain: float | None
    rad: RadDraw | None

    @classmethod
    def of(
        cls,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        scale: float,
        threshold: float | None,
        seed: torch.Tensor,
        counter: int,
        p: float,
    ) -> RamArithmetic:
        keys = k.shape[-2]
        gain = None
        if threshold is not None:
            check_threshold(threshold, keys)
            gain = float(np.float32(mas_gain(threshold, keys)))
        if not (math.prod(q.shape[:-1]) < 2**31 and keys < 2**31):
            raise ValueError(f"RAD's generator indexes rows and keys below 2^31; got q {tuple(q.shape)}, {keys} keys")
        rad = RadDraw.of(seed.to(q.device), counter, p) if p > 0 else None
        return cls(scale, gain, rad)


@dataclass(frozen=True)
class Tiles:
    """Tile sizes (queries × keys) and launch settings; small ones exercise ragged edges in tests."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def default(cls, device: torch.device) -> Tiles:
        # The interpreter runs a tile as numpy arrays: small tiles keep tests quick.
        return cls(16, 16) if device.type == "cpu" else cls()


def _kernels() -> Any:
    from harden.ram import _triton_attention_kernels as kernels  # imports triton: only when used

    return kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"fused attention needs q (B, H, Nq, d) and k, v (B, H, Nk, d); got {q.shape}, {k.shape}, {v.shape}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"fused attention takes fp32, fp16 or bf16 q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.device.type == "cpu" and not interpreting():
        raise RuntimeError("Triton kernels need a GPU, or TRITON_INTERPRET=1 (set before importing triton) on CPU")


def _launch_settings(
    ram: RamArithmetic, q: torch.Tensor, k: torch.Tensor, tiles: Tiles
) -> tuple[list[Any], dict[str, Any]]:
    """The arguments every kernel shares after its tensors, and its compile-time settings."""
    rad = ram.rad
    seed = rad.seed if rad is not None else torch.zeros((), dtype=torch.int64, device=q.device)
    nq, nk, d = q.shape[2], k.shape[2], q.shape[3]
    numbers = [ram.scale, ram.mas_gain or 0.0, rad.bound if rad else 0, rad.scale if rad else 1.0]
    meta = {
        "MAS": ram.mas_gain is not None,
        "RAD": rad is not None,
        "IEEE": q.dtype == torch.float32,
        "UPCAST": q.dtype == torch.bfloat16 and q.device.type == "cpu",
        "BLOCK_M": tiles.block_m,
        "BLOCK_N": tiles.block_n,
        "BLOCK_D": max(16, 1 << math.ceil(math.log2(d))),
        "num_warps": tiles.num_warps,
        "num_stages": tiles.num_stages,
    }
    return [seed, rad.counter if rad else 0, nq, nk, d, *numbers], meta


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ram: RamArithmetic, tiles: Tiles | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Nq, d) in q's dtype, log-sum-exp (B, H, Nq) float32 for the backward pass)."""
    _check(q, k, v)
    tiles = tiles or Tiles.default(q.device)
    kernels = _kernels()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # O(N·d) copies at most; the kernels index densely
    b, h, nq, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, h, nq), dtype=torch.float32, device=q.device)
    args, meta = _launch_settings(ram, q, k, tiles)
    kernels.forward[(_cdiv(nq, tiles.block_m), b * h)](q, k, v, out, lse, *args, **meta)
    return out, lse


def attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    ram: RamArithmetic,
    tiles: Tiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for the gradient `grad` of `out`, recomputing the tiles (see the module doc)."""
    tiles = tiles or Tiles.default(q.device)
    kernels = _kernels()
    q, k, v, grad = q.contiguous(), k.contiguous(), v.contiguous(), grad.contiguous()
    delta = (grad.float() * out.float()).sum(dim=-1)  # (B, H, Nq): Δ_i = dO_i·out_i
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args, meta = _launch_settings(ram, q, k, tiles)
    kernels.backward_keys[(_cdiv(nk, tiles.block_n), b * h)](q, k, v, grad, lse, delta, dk, dv, *args, **meta)
    kernels.backward_queries[(_cdiv(nq, tiles.block_m), b * h)](q, k, v, grad, lse, delta, dq, *args, **meta)
    return dq, dk, dv


def inference_constants(ram: RamArithmetic, q: torch.Tensor, tiles: Tiles) -> dict[str, Any]:
    """The compile-time arguments of the `infer` kernel: the node's attributes and the tiles.

    Shared by `attention_infer` and the TensorRT plugin (`export.tensorrt`), which compiles the
    same kernel ahead of time with these values.
    """
    _, meta = _launch_settings(ram, q, q, tiles)
    rad = ram.rad
    constants = {
        "D": q.shape[-1],
        "counter": rad.counter if rad else 0,
        "scale": ram.scale,
        "gain": ram.mas_gain or 0.0,
        "bound": rad.bound if rad else 0,
        "keep_scale": rad.scale if rad else 1.0,
    }
    return constants | meta


def attention_infer(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ram: RamArithmetic, tiles: Tiles | None = None
) -> torch.Tensor:
    """The deployment kernel (the TensorRT plugin's): `attention_forward`'s output, no log-sum-exp."""
    _check(q, k, v)
    tiles = tiles or Tiles.default(q.device)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, nq, _ = q.shape
    out = torch.empty_like(q)
    seed = ram.rad.seed if ram.rad else torch.zeros((), dtype=torch.int64, device=q.device)
    grid = (_cdiv(nq, tiles.block_m), b * h)
    _kernels().infer[grid](q, k, v, seed, nq, k.shape[2], out, **inference_constants(ram, q, tiles))
    return out


__all__ = [
    "RadDraw",
    "RamArithmetic",
    "Tiles",
    "attention_backward",
    "attention_forward",
    "attention_infer",
    "inference_constants",
    "interpreting",
    "triton_available",
]
