"""How close harden's memory estimate (harden.memory) is to what a step really takes.

For each model and size, in a fresh process: the estimate of one attack step (forward, backward
to the input, batch B) fitted from small probes, then the step itself at the real size; measured
= the process's peak resident memory (ru_maxrss) minus its resident memory just before the step
(after a warm-up at a small size, so the libraries' one-time allocations are not counted); with
`--device cuda`, the CUDA allocator's peak during the step minus what was allocated before it.
Ratios above 1 mean the step took more than the tensors the estimate counts; a refusal allows
`harden.memory.OVERHEAD` on top of the estimate.

    python bench/memory_estimate.py                 # the three models, two sizes each
    python bench/memory_estimate.py --batch 2 --models segformer_tiny --sizes 256x512
    python bench/memory_estimate.py --device cuda --sizes 512x1024,1024x2048 --batch 4

Record the table in docs/benchmarks.md with the command and the date.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from harden.memory import OVERHEAD, fit_memory, model_step
from harden.models import create_model

name, height, width, batch, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
model = create_model(name, 19).eval().to(device)
step = model_step(model, backward=True)
step(1, 64, 64)  # warm-up: the libraries' one-time allocations
started = time.perf_counter()
fitted = fit_memory(step, height, width, device=device)
seconds = time.perf_counter() - started
estimate = fitted.bytes(batch, height, width)
if device.startswith("cuda"):  # the allocator's own peak: what the estimate is compared with on a GPU
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(batch, height, width)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before
else:
    resident = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    step(batch, height, width)
    measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - resident
print(json.dumps({"estimate": estimate, "measured": measured, "probe_seconds": seconds, "overhead": OVERHEAD}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="pspnet_tiny,segformer_tiny,segmenter_tiny")
    parser.add_argument("--sizes", default="256x512,512x1024")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (peak resident memory) or cuda (the allocator's peak)")
    args = parser.parse_args()
    print(f"{'model':<16} {'size':>10} {'batch':>5} {'estimate MB':>12} {'measured MB':>12} {'measured/est':>13} "
          f"{'probe s':>8}")  # fmt: skip
    for name in args.models.split(","):
        for size in args.sizes.split(","):
            height, width = (int(v) for v in size.split("x"))
            command = [sys.executable, "-c", CHILD, name, str(height), str(width), str(args.batch), args.device]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = row["measured"] / row["estimate"]
            print(f"{name:<16} {size:>10} {args.batch:>5} {row['estimate'] / 2**20:>12.1f} "
                  f"{row['measured'] / 2**20:>12.1f} {ratio:>13.2f} {row['probe_seconds']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
