"""The Triton kernels of `harden.ram.triton_attention` (see its docstring for the maths).

A module of its own because it imports triton at the top (jitted helpers must be module-level
globals to be callable from kernels), and triton is optional: only the launchers import it.
"""

import triton
import triton.language as tl

from harden.ram.counter_rng import KEYS, P

# The generator's constants (`harden.ram.counter_rng`), as compile-time values.
PRIME = tl.constexpr(P)
K0, K1, K2, K3, K4, K5, K6, K7, K8 = (tl.constexpr(key) for key in KEYS)


@triton.jit
def dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # IEEE (fp32 inputs): true fp32 products, not TF32, so the kernel matches the PyTorch ops.
    # UPCAST: Triton 3.9's interpreter returns garbage for bf16 dots; on CPU they run in fp32.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    elif UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def logits_to_z(a, gain, MAS: tl.constexpr):
    if MAS:
        return a / (1.0 + tl.abs(a)) * gain
    else:
        return a


@triton.jit
def mix(x, k):
    """((x + k) mod P)² mod P on int64 (x, k ≥ 0): the generator's round."""
    x = (x + k) % PRIME
    return x * x % PRIME


@triton.jit
def stream_keys(SEED, counter):
    """(kr, kc) of one RAD call, from the seed tensor on the device: no host round trip."""
    s = tl.load(SEED).to(tl.int64) % PRIME
    s = tl.where(s < 0, s + PRIME, s)  # Triton's % truncates; the spec's remainder is non-negative
    kr = mix(mix(mix(s, K0) + counter, K1), K2)
    return kr, mix(mix(kr, K3), K4)


@triton.jit
def lane(index, key, k1, k2):
    """hr[r] or hc[c]: mix(mix(index + key, k1), k2) mod 2³⁰, index int64."""
    return mix(mix(index + key, k1), k2) % 1073741824


@triton.jit
def keep_mask(row_lanes, key_lanes, bound):
    x = row_lanes[:, None] + key_lanes[None, :]  # int64, < 2³¹
    return ((x * x) & 0xFFFFFFFFFFF) >= bound  # x² mod 2⁴⁴ (2^(20 + MASK_BITS)); x² < 2⁶²: exact


@triton.jit
def attend(
    Q, K, V, SEED, counter, NQ, NK, D, scale, gain, bound, keep_scale,
    MAS: tl.constexpr, RAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One query tile's output (BLOCK_M, BLOCK_D) and log-sum-exp (BLOCK_M,): the forward maths."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < NQ
    q = tl.load(Q + bh * NQ * D + rows[:, None] * D + dims[None, :], mask=row_in[:, None] & (dims[None, :] < D))
    if RAD:
        kr, kc = stream_keys(SEED, counter)
        row_lanes = lane(bh * NQ + rows, kr, K5, K6)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)  # noqa: E741
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, NK, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < NK
        tile = cols[:, None] * D + dims[None, :]
        tile_in = col_in[:, None] & (dims[None, :] < D)
        k = tl.load(K + bh * NK * D + tile, mask=tile_in, other=0.0)
        a = dot(q, tl.trans(k), IEEE, UPCAST) * scale  # (BLOCK_M, BLOCK_N)
        z = tl.where(col_in[None, :], logits_to_z(a, gain, MAS), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        rescale = tl.exp(m - m_new)
        p = tl.exp(z - m_new[:, None])
        l = l * rescale + tl.sum(p, axis=1)  # noqa: E741  (over all keys: RAD drops after normalising)
        if RAD:
            key_lanes = lane(cols.to(tl.int64), kc, K7, K8)
            p = tl.where(keep_mask(row_lanes, key_lanes, bound), p * keep_scale, 0.0)
        v = tl.load(V + bh * NK * D + tile, mask=tile_in, other=0.0)
        acc = acc * rescale[:, None] + dot(p.to(v.dtype), v, IEEE, UPCAST)
        m = m_new
    return acc / l[:, None], m + tl.log(l)


@triton.jit
def store_tile(OUT, out, NQ, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    tl.store(
        OUT + bh * NQ * D + rows[:, None] * D + dims[None, :], out, mask=(rows < NQ)[:, None] & (dims[None, :] < D)
    )


@triton.jit
def forward(
    Q, K, V, OUT, LSE, SEED, counter, NQ, NK, D, scale, gain, bound, keep_scale,
    MAS: tl.constexpr, RAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Training and attacks: the output and, for the backward pass, the log-sum-exp."""
    out, lse = attend(
        Q, K, V, SEED, counter, NQ, NK, D, scale, gain, bound, keep_scale,
        MAS, RAD, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    store_tile(OUT, out, NQ, D, BLOCK_M, BLOCK_D)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(LSE + tl.program_id(1).to(tl.int64) * NQ + rows, lse, mask=rows < NQ)


@triton.jit
def infer(
    Q, K, V, SEED, NQ, NK, OUT,
    D: tl.constexpr, counter: tl.constexpr, scale: tl.constexpr, gain: tl.constexpr, bound: tl.constexpr,
    keep_scale: tl.constexpr,
    MAS: tl.constexpr, RAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Deployment (the TensorRT plugin): the output only, in TensorRT's AOT calling convention —
    input pointers, then the integer arguments TensorRT passes (sizes), then output pointers;
    everything else is a node attribute, compiled in."""
    out, _ = attend(
        Q, K, V, SEED, counter, NQ, NK, D, scale, gain, bound, keep_scale,
        MAS, RAD, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    store_tile(OUT, out, NQ, D, BLOCK_M, BLOCK_D)


@triton.jit
def tile_gradients(
    q, k, v, do, lse, delta, row_lanes, key_lanes, row_in, col_in, scale, gain, bound, keep_scale,
    MAS: tl.constexpr, RAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """(D, dA) of one (query tile, key tile) pair: the applied weights and the logits' gradient."""
    a = dot(q, tl.trans(k), IEEE, UPCAST) * scale
    z = logits_to_z(a, gain, MAS)
    p = tl.where(row_in[:, None] & col_in[None, :], tl.exp(z - lse[:, None]), 0.0)
    dp = dot(do, tl.trans(v), IEEE, UPCAST)
    if RAD:
        kept = keep_mask(row_lanes, key_lanes, bound)
        applied = tl.where(kept, p * keep_scale, 0.0)
        dp = tl.where(kept, dp * keep_scale, 0.0)
    else:
        applied = p
    dz = p * (dp - delta[:, None])
    if MAS:
        denominator = 1.0 + tl.abs(a)
        dz = dz * gain / (denominator * denominator)
    return applied, dz


@triton.jit
def backward_keys(
    Q, K, V, DO, LSE, DELTA, DK, DV, SEED, counter, NQ, NK, D, scale, gain, bound, keep_scale,
    MAS: tl.constexpr, RAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_in = cols < NK
    key_tile = bh * NK * D + cols[:, None] * D + dims[None, :]
    key_tile_in = col_in[:, None] & (dims[None, :] < D)
    k = tl.load(K + key_tile, mask=key_tile_in, other=0.0)
    v = tl.load(V + key_tile, mask=key_tile_in, other=0.0)
    kr, kc = stream_keys(SEED, counter)  # (the lanes are unused, and cheap, when RAD is off)
    key_lanes = lane(cols.to(tl.int64), kc, K7, K8)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, NQ, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_in = rows < NQ
        query_tile = bh * NQ * D + rows[:, None] * D + dims[None, :]
        query_tile_in = row_in[:, None] & (dims[None, :] < D)
        q = tl.load(Q + query_tile, mask=query_tile_in, other=0.0)
        do = tl.load(DO + query_tile, mask=query_tile_in, other=0.0)
        lse = tl.load(LSE + bh * NQ + rows, mask=row_in, other=0.0)
        delta = tl.load(DELTA + bh * NQ + rows, mask=row_in, other=0.0)
        row_lanes = lane(bh * NQ + rows, kr, K5, K6)
        applied, dz = tile_gradients(
            q, k, v, do, lse, delta, row_lanes, key_lanes, row_in, col_in, scale, gain, bound, keep_scale,
            MAS, RAD, IEEE, UPCAST,
        )  # fmt: skip
        dv += dot(tl.trans(applied).to(do.dtype), do, IEEE, UPCAST)
        dk += dot(tl.trans(dz).to(q.dtype), q, IEEE, UPCAST)
    tl.store(DK + key_tile, dk * scale, mask=key_tile_in)
    tl.store(DV + key_tile, dv, mask=key_tile_in)


@triton.jit
def backward_queries(
    Q, K, V, DO, LSE, DELTA, DQ, SEED, counter, NQ, NK, D, scale, gain, bound, keep_scale,
    MAS: tl.constexpr, RAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < NQ
    query_tile = bh * NQ * D + rows[:, None] * D + dims[None, :]
    query_tile_in = row_in[:, None] & (dims[None, :] < D)
    q = tl.load(Q + query_tile, mask=query_tile_in, other=0.0)
    do = tl.load(DO + query_tile, mask=query_tile_in, other=0.0)
    lse = tl.load(LSE + bh * NQ + rows, mask=row_in, other=0.0)
    delta = tl.load(DELTA + bh * NQ + rows, mask=row_in, other=0.0)
    kr, kc = stream_keys(SEED, counter)  # (the lanes are unused, and cheap, when RAD is off)
    row_lanes = lane(bh * NQ + rows, kr, K5, K6)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, NK, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < NK
        key_tile = bh * NK * D + cols[:, None] * D + dims[None, :]
        key_tile_in = col_in[:, None] & (dims[None, :] < D)
        k = tl.load(K + key_tile, mask=key_tile_in, other=0.0)
        v = tl.load(V + key_tile, mask=key_tile_in, other=0.0)
        key_lanes = lane(cols.to(tl.int64), kc, K7, K8)
        _, dz = tile_gradients(
            q, k, v, do, lse, delta, row_lanes, key_lanes, row_in, col_in, scale, gain, bound, keep_scale,
            MAS, RAD, IEEE, UPCAST,
        )  # fmt: skip
        dq += dot(dz.to(k.dtype), k, IEEE, UPCAST)
    tl.store(DQ + query_tile, dq * scale, mask=query_tile_in)
