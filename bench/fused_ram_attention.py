"""Fused RobustAttention (MAS + RAD, Triton) vs the unfused PyTorch RAM vs vanilla flash SDPA, on a GPU.

For each key count N (self-attention, Nq = Nk = N; heads 8, head dim 64, bf16 by default) it
times, forward and forward+backward:
- `sdpa`: `F.scaled_dot_product_attention` restricted to the flash backend (vanilla attention);
- `unfused`: RAM as `RobustAttentionCore`'s explicit path computes it (q·kᵀ → harden::mas →
  harden::rad → ·v), N×N matrices in memory;
- `fused`: `harden::robust_attention`, the Triton kernels (no N×N matrix).
Times are medians of CUDA-event timings over several repeats after warm-up, the three variants
interleaved round-robin so that clock drift hits all alike; peak memory is the allocator's peak
above the inputs. A variant that runs out of memory is reported as such. Targets (issue 9):
fused ≤ 1.25× sdpa, fused ≥ 3× faster than unfused at N = 4k, memory O(N).

Needs a CUDA GPU and Triton; on a machine without one it says so and exits 2 (no figures).

    python bench/fused_ram_attention.py [--keys 1024,4096,16384] [--batch-size 1] [--dtype bf16]
        [--repeats 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from harden.ram import fused_attention
from harden.ram.triton_attention import triton_available

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
THRESHOLD, DROP_P = 0.3, 0.5


def variants(seed: torch.Tensor) -> dict[str, Callable[..., torch.Tensor]]:
    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    def unfused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return torch.ops.harden.rad(torch.ops.harden.mas(logits, THRESHOLD), seed, 0, DROP_P) @ v

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out, _ = torch.ops.harden.robust_attention(q, k, v, q.shape[-1] ** -0.5, THRESHOLD, seed, 0, DROP_P)
        return out

    return {"sdpa": sdpa, "unfused": unfused, "fused": fused}


def one_run(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], backward: bool) -> tuple[float, int]:
    """(milliseconds, peak bytes above the inputs) of one call, or raises torch.OutOfMemoryError."""
    for t in inputs:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn(*inputs)
    if backward:
        out.backward(torch.ones_like(out))
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), torch.cuda.max_memory_allocated() - base


def measure(
    keys: int, batch: int, dtype: torch.dtype, repeats: int, backward: bool
) -> dict[str, dict[str, float | str]]:
    torch.manual_seed(0)
    inputs = [torch.randn(batch, 8, keys, 64, device="cuda", dtype=dtype, requires_grad=backward) for _ in range(3)]
    fns = variants(torch.tensor(7, device="cuda"))
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, int] = dict.fromkeys(fns, 0)
    failed: dict[str, str] = {}
    for round_ in range(repeats + 2):  # two warm-up rounds (Triton compiles on the first call)
        for name, fn in fns.items():
            if name in failed:
                continue
            try:
                ms, peak = one_run(fn, inputs, backward)
            except torch.OutOfMemoryError:
                failed[name] = "out of memory"
                torch.cuda.empty_cache()
                continue
            if round_ >= 2:
                times[name].append(ms)
                peaks[name] = max(peaks[name], peak)
    result: dict[str, dict[str, float | str]] = {}
    for name in fns:
        if name in failed:
            result[name] = {"error": failed[name]}
        else:
            result[name] = {"ms": statistics.median(times[name]), "peak_mib": peaks[name] / 2**20}
    return result


def ratio(results: dict[str, dict[str, float | str]], a: str, b: str) -> float | None:
    x, y = results[a].get("ms"), results[b].get("ms")
    return float(x) / float(y) if isinstance(x, float) and isinstance(y, float) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", default="1024,4096,16384", help="comma-separated key counts N")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not triton_available():
        print("this benchmark needs a CUDA GPU with Triton; none here, so no figures", file=sys.stderr)
        return 2
    assert fused_attention.runs_triton(torch.device("cuda"))
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}, {args.dtype}, batch {args.batch_size}, heads 8, d 64, {date.today()}")
    print(
        "| N | pass | sdpa ms | unfused ms | fused ms | fused/sdpa | unfused/fused | peak MiB sdpa / unfused / fused |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for keys in (int(n) for n in args.keys.split(",")):
        for backward in (False, True):
            results = measure(keys, args.batch_size, DTYPES[args.dtype], args.repeats, backward)
            rows.append({"keys": keys, "backward": backward, "results": results})

            def cell(name: str, field: str, fmt: str, res: dict = results) -> str:
                value = res[name].get(field)
                return format(value, fmt) if isinstance(value, float) else str(res[name].get("error", "-"))

            over_sdpa, speedup = ratio(results, "fused", "sdpa"), ratio(results, "unfused", "fused")
            over_text = "-" if over_sdpa is None else f"{over_sdpa:.2f}×"
            speedup_text = "-" if speedup is None else f"{speedup:.1f}×"
            times = " | ".join(cell(name, "ms", ".3f") for name in ("sdpa", "unfused", "fused"))
            peaks = " / ".join(cell(name, "peak_mib", ".0f") for name in ("sdpa", "unfused", "fused"))
            print(f"| {keys} | {'fwd+bwd' if backward else 'fwd'} | {times} | {over_text} | {speedup_text} | {peaks} |")
    if args.out:
        args.out.write_text(json.dumps({"gpu": gpu, "dtype": args.dtype, "date": str(date.today()), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
