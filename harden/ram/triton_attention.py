"""RobustAttention (MAS + RAD) as fused Triton kernels: flash-attention tiles, no N×N matrix.

    out = RAD(MAS(scale·q·kᵀ)) · v        q (B, H, Nq, d), k and v (B, H, Nk, d)

The forward kernel walks the keys in tiles with an online softmax (Dao et al., FlashAttention
2): per query row it keeps the running maximum m, the running sum l of exp(z − m) and the
unnormalised output. MAS only changes the logits, z = k_MAS·softsign(a) (docs/design.md §3). RAD
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

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harden.ram.counter_rng import drop_threshold, keep_scale, stream_keys
from harden.ram.ops import check_threshold, mas_gain


@functools.cache  # asked on every attention call on a GPU: look the package up once
def triton_available() -> bool:
    """Whether Triton is installed (the fused kernels' only requirement besides a GPU)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (slowly): how tests run without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class RadDraw:
    """One RAD call's settings; the kernels derive its keys and lanes from the seed tensor, which
    they read on the device (no host synchronisation).

    Args:
        counter: the call's index in the forward pass, in [0, 2³¹ − 1).
        bound: θ·2²⁰; an element is kept iff x² mod 2⁴⁴ ≥ bound.
        scale: the float32 factor applied to kept weights.
    """

    counter: int
    bound: int
    scale: float

    @classmethod
    def of(cls, counter: int, p: float) -> RadDraw:
        stream_keys(0, counter)  # refuses a counter out of range, as every implementation does
        return cls(counter, drop_threshold(p) << 20, keep_scale(p))


@dataclass(frozen=True)
class RamArithmetic:
    """What one fused call computes besides q·kᵀ·v: a node's attributes, resolved for its key count.

    Args:
        scale: logit scale (1/√d by default, divided by RAM's temperature if any).
        mas_gain: k of MAS, ½·log((Nk−1)·T/(1−T)); None for a plain softmax.
        rad: the RAD draw; None when nothing is dropped.
    """

    scale: float
    mas_gain: float | None
    rad: RadDraw | None

    @classmethod
    def of(cls, *, keys: int, scale: float, threshold: float | None, counter: int, p: float) -> RamArithmetic:
        gain = None
        if threshold is not None:
            check_threshold(threshold, keys)
            gain = float(np.float32(mas_gain(threshold, keys)))
        return cls(scale, gain, RadDraw.of(counter, p) if p > 0 else None)


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


def _compile_settings(
    ram: RamArithmetic, head_dim: int, dtype: torch.dtype, on_cpu: bool, tiles: Tiles
) -> dict[str, Any]:
    """The kernels' compile-time settings (constexprs, warps, stages)."""
    return {
        "MAS": ram.mas_gain is not None,
        "RAD": ram.rad is not None,
        "IEEE": dtype == torch.float32,
        "UPCAST": dtype == torch.bfloat16 and on_cpu,
        "BLOCK_M": tiles.block_m,
        "BLOCK_N": tiles.block_n,
        "BLOCK_D": max(16, 1 << math.ceil(math.log2(head_dim))),
        "num_warps": tiles.num_warps,
        "num_stages": tiles.num_stages,
    }


def _numbers(ram: RamArithmetic) -> dict[str, Any]:
    rad = ram.rad
    return {
        "counter": rad.counter if rad else 0,
        "scale": ram.scale,
        "gain": ram.mas_gain or 0.0,
        "bound": rad.bound if rad else 0,
        "keep_scale": rad.scale if rad else 1.0,
    }


def _launch_settings(
    ram: RamArithmetic, q: torch.Tensor, k: torch.Tensor, seed: torch.Tensor, tiles: Tiles
) -> tuple[list[Any], dict[str, Any]]:
    """The arguments every training kernel takes after its tensors, and its compile-time settings."""
    numbers = _numbers(ram)
    seed = seed.reshape(()).to(device=q.device, dtype=torch.int64)
    args = [seed, numbers.pop("counter"), q.shape[2], k.shape[2], q.shape[3], *numbers.values()]
    return args, _compile_settings(ram, q.shape[3], q.dtype, q.device.type == "cpu", tiles)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seed: torch.Tensor,
    ram: RamArithmetic,
    tiles: Tiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Nq, d) in q's dtype, log-sum-exp (B, H, Nq) float32 for the backward pass)."""
    _check(q, k, v)
    tiles = tiles or Tiles.default(q.device)
    kernels = _kernels()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # O(N·d) copies at most; the kernels index densely
    b, h, nq, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, h, nq), dtype=torch.float32, device=q.device)
    args, meta = _launch_settings(ram, q, k, seed, tiles)
    kernels.forward[(_cdiv(nq, tiles.block_m), b * h)](q, k, v, out, lse, *args, **meta)
    return out, lse


def attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seed: torch.Tensor,
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
    args, meta = _launch_settings(ram, q, k, seed, tiles)
    kernels.backward_keys[(_cdiv(nk, tiles.block_n), b * h)](q, k, v, grad, lse, delta, dk, dv, *args, **meta)
    kernels.backward_queries[(_cdiv(nq, tiles.block_m), b * h)](q, k, v, grad, lse, delta, dq, *args, **meta)
    return dq, dk, dv


def inference_constants(
    ram: RamArithmetic, head_dim: int, dtype: torch.dtype, tiles: Tiles, on_cpu: bool = False
) -> dict[str, Any]:
    """The compile-time arguments of the `infer` kernel: the node's attributes and the tiles.

    Shared by `attention_infer` and the TensorRT plugin (`harden.export.tensorrt`), which compiles the
    same kernel ahead of time with these values.
    """
    return {"D": head_dim, **_numbers(ram), **_compile_settings(ram, head_dim, dtype, on_cpu, tiles)}


def attention_infer(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seed: torch.Tensor,
    ram: RamArithmetic,
    tiles: Tiles | None = None,
) -> torch.Tensor:
    """The deployment kernel (the TensorRT plugin's): `attention_forward`'s output, no log-sum-exp."""
    _check(q, k, v)
    tiles = tiles or Tiles.default(q.device)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, nq, _ = q.shape
    out = torch.empty_like(q)
    seed = seed.reshape(()).to(device=q.device, dtype=torch.int64)
    constants = inference_constants(ram, q.shape[3], q.dtype, tiles, on_cpu=q.device.type == "cpu")
    _kernels().infer[(_cdiv(nq, tiles.block_m), b * h)](q, k, v, seed, nq, k.shape[2], out, **constants)
    return out


_POINTERS = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def compile_deployment_kernel(
    ram: RamArithmetic, head_dim: int, dtype: torch.dtype, target: Any = None, tiles: Tiles | None = None
) -> Any:
    """`infer` compiled ahead of time for a CUDA GPU (what the TensorRT AOT plugin embeds).

    Args:
        target: a `triton.backends.compiler.GPUTarget`; None compiles for this machine's GPU.
            With an explicit target no GPU is needed (Triton ships its own compiler and ptxas).

    Returns:
        Triton's compiled kernel: `.asm["ptx"]`, `.metadata.name`, `.metadata.num_warps`,
        `.metadata.shared`. Its arguments: Q, K, V, SEED, NQ, NK, OUT.
    """
    import triton

    constants = inference_constants(ram, head_dim, dtype, tiles or Tiles())
    options = {name: constants.pop(name) for name in ("num_warps", "num_stages")}
    pointer = _POINTERS[dtype]
    signature = {"Q": pointer, "K": pointer, "V": pointer, "SEED": "*i64", "NQ": "i32", "NK": "i32", "OUT": pointer}
    signature |= dict.fromkeys(constants, "constexpr")
    source = triton.compiler.ASTSource(fn=_kernels().infer, signature=signature, constexprs=constants)
    return triton.compile(source, target=target, options=options)


__all__ = [
    "RadDraw",
    "RamArithmetic",
    "Tiles",
    "attention_backward",
    "attention_forward",
    "attention_infer",
    "compile_deployment_kernel",
    "inference_constants",
    "interpreting",
    "triton_available",
]
