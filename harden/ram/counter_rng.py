"""RAD's counter-based generator, "harden-rad-v1": the one specification of RAD's randomness.

RAD's drop mask must be reproducible bit for bit by PyTorch, numpy, ONNX standard ops (the
function body of the exported `harden::Rad` node), a Triton kernel and a TensorRT plugin, with
the seed fed at run time (docs/design.md §3). So the mask is a pure function of
(seed, call counter, element position) built from integer arithmetic only: +, ×, floor
division and non-negative remainder on int64, never overflowing and never needing the bitwise
ops TensorRT lacks (docs/design.md §4).

Specification (all values are int64; `mod` is the non-negative remainder, as ONNX `Mod` with
fmod=0, numpy `%` and `torch.remainder` compute it for a positive divisor):

    P = 2³¹ − 1                                   (a prime)
    mix(x, k) = ((x + k) mod P)² mod P            (x, k ≥ 0; the square is < 2⁶²)

    key schedule, on scalars (cheap, so it may be thorough):
        s  = seed mod P                           (seed: any int64, negative too)
        kr = mix(mix(mix(s, K0) + counter, K1), K2)
        kc = mix(mix(kr, K3), K4)

    the attention tensor (..., Nq, Nk) is viewed as a matrix of R = prod(...)·Nq rows and
    C = Nk columns in row-major order; row r and column c get one hash each (vectors of length R
    and C, cheap):
        hr[r] = mix(mix(r + kr, K5), K6) mod 2³⁰
        hc[c] = mix(mix(c + kc, K7), K8) mod 2³⁰

    per element, the only full-size work (a "middle square"):
        x = hr[r] + hc[c]                         (< 2³¹)
        h = floor(x² / 2²⁰) mod 2²⁴               (bits 20..43 of x², uniform on [0, 2²⁴))

    Seeds equal modulo P give the same masks (2⁶³ − 1 and 1, say).

    keep the element iff h ≥ θ with θ = floor(float32(p) · 2²⁴) (exact in any float format), and
    scale kept elements by float32(2²⁴ / (2²⁴ − θ)): the inverse of the exact keep probability,
    so E[RAD(M)] = M exactly.

Counter: 0 ≤ counter < P (RAD calls in one forward pass count 0, 1, 2, ...). R and C must be
below 2³¹. Implementations may compute the same function differently (the PyTorch one uses
shifts and masks for the powers of two); they must all reproduce `TEST_VECTORS`.

Cost per element: one broadcast add, one multiply, one shift/divide, one mask/remainder and one
compare, in place of the two full hash rounds per element that made a naive RAD 23× slower than
the attention it guards. Statistical quality (measured by `tests/test_counter_rng.py` and
`bench/rad_generator_quality.py`, and recorded in docs/benchmarks.md): chi-square of h over
1000 bins and 1e6 draws, lag-1 correlation along rows and columns, correlation between
consecutive counters and consecutive seeds, and serial pairs, all at the level of true
randomness. It is a hash for dropout masks, not a cryptographic or Monte Carlo generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    import torch

GENERATOR: Final = "harden-rad-v1"
P: Final = 2**31 - 1
KEYS: Final = (
    1_234_567_891,
    1_618_033_988,
    1_414_213_562,
    1_732_050_807,
    88_584_330,
    1_098_612_288,
    1_772_453_850,
    1_202_056_903,
    1_644_934_066,
)
MASK_BITS: Final = 24
MAX_COUNTER: Final = P

# (seed, counter, rows, cols) → the first 8 values of h in row-major order, computed with
# `hash_numpy` and checked by every implementation's tests. Published for plugin authors.
TEST_VECTORS: Final[tuple[tuple[tuple[int, int, int, int], tuple[int, ...]], ...]] = (
    ((0, 0, 2, 4), (6872064, 2957808, 3105257, 16419450, 6767315, 5928712, 11781908, 4575656)),
    ((1, 0, 2, 4), (10826969, 13484134, 6959647, 8351641, 743586, 7517795, 14390796, 16642789)),
    ((0, 1, 2, 4), (2757916, 3128068, 5343564, 9369124, 2874545, 12959029, 3452112, 16643548)),
    ((-5, 7, 1, 8), (15608965, 1060409, 2815196, 12153208, 13298523, 1124309, 7741587, 11268173)),
    ((2**62, 2**31 - 2, 4, 2), (6381719, 11967903, 2171009, 10959053, 14880311, 526480, 10913302, 1549113)),
)


def _mix(x: int, k: int) -> int:
    x = (x + k) % P
    return x * x % P


def stream_keys(seed: int, counter: int) -> tuple[int, int]:
    """(kr, kc): the row and column keys of one RAD call. Scalar work, identical everywhere."""
    if not 0 <= counter < MAX_COUNTER:
        raise ValueError(f"RAD call counter must be in [0, 2^31 - 1), got {counter}")
    s = seed % P
    kr = _mix(_mix(_mix(s, KEYS[0]) + counter, KEYS[1]), KEYS[2])
    kc = _mix(_mix(kr, KEYS[3]), KEYS[4])
    return kr, kc


def drop_threshold(p: float) -> int:
    """θ: an element is dropped iff its hash h < θ, so P(drop) = θ / 2²⁴ ≈ p."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"RAD drop probability must be in [0, 1), got {p}")
    return int(np.floor(np.float64(np.float32(p)) * 2**MASK_BITS))


def keep_scale(p: float) -> float:
    """The float32 factor applied to kept elements: 2²⁴ / (2²⁴ − θ), rounded once to float32."""
    theta = drop_threshold(p)
    return float(np.float32(2**MASK_BITS / (2**MASK_BITS - theta)))


def _lane_numpy(index: np.ndarray, key: int, k1: int, k2: int) -> np.ndarray:
    x = (index + key + k1) % P
    x = (x * x + k2) % P
    x = x * x % P
    return x % 2**30


def lanes_numpy(seed: int, counter: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(hr, hc): the row and column hashes of one RAD call, int64 vectors in [0, 2³⁰).

    Small (rows + cols values), so every implementation may compute them on the host; only
    x = hr[r] + hc[c] and what follows is per element.
    """
    if not (0 < rows < 2**31 and 0 < cols < 2**31):
        raise ValueError(f"RAD hash needs 0 < rows, cols < 2^31, got {rows}×{cols}")
    kr, kc = stream_keys(seed, counter)
    hr = _lane_numpy(np.arange(rows, dtype=np.int64), kr, KEYS[5], KEYS[6])
    hc = _lane_numpy(np.arange(cols, dtype=np.int64), kc, KEYS[7], KEYS[8])
    return hr, hc


def hash_numpy(seed: int, counter: int, rows: int, cols: int) -> np.ndarray:
    """The reference implementation: h for a (rows, cols) matrix, int64 in [0, 2²⁴)."""
    hr, hc = lanes_numpy(seed, counter, rows, cols)
    x = hr[:, None] + hc[None, :]
    return (x * x) // 2**20 % 2**MASK_BITS


def keep_mask_numpy(seed: int, counter: int, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The boolean keep-mask of one RAD call on a tensor of `shape` (last dim = keys)."""
    cols = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return (hash_numpy(seed, counter, rows, cols) >= drop_threshold(p)).reshape(shape)


def _square_torch(seed: int, counter: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """x² per element, (rows, cols) int64: the spec up to its last step.

    The key schedule and the two lane vectors are small, so the numpy reference computes them
    (a few µs, against ~25 tiny tensor ops); only the full-size work runs in torch.
    """
    import torch

    hr, hc = (torch.from_numpy(lane).to(device) for lane in lanes_numpy(seed, counter, rows, cols))
    x = hr[:, None] + hc[None, :]  # (rows, cols), < 2³¹
    return x.mul_(x)  # < 2⁶², exact


def hash_torch(seed: int, counter: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """`hash_numpy` in PyTorch: (rows, cols) int64 on `device`."""
    x = _square_torch(seed, counter, rows, cols, device)
    # x is non-negative, so the shift is floor(x / 2²⁰) and the mask is mod 2²⁴.
    return x.bitwise_right_shift_(20).bitwise_and_(2**MASK_BITS - 1)


def keep_mask_torch(seed: int, counter: int, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """The boolean keep-mask of one RAD call, identical to `keep_mask_numpy`."""
    cols = shape[-1]
    rows = 1
    for size in shape[:-1]:
        rows *= size
    x = _square_torch(seed, counter, rows, cols, device)
    # h ≥ θ  ⇔  floor(x / 2²⁰) mod 2²⁴ ≥ θ  ⇔  x mod 2⁴⁴ ≥ θ·2²⁰: one pass fewer than computing h.
    keep = x.bitwise_and_(2 ** (20 + MASK_BITS) - 1) >= drop_threshold(p) << 20
    return keep.reshape(shape)
