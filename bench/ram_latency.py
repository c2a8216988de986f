"""Forward latency of every attention model with RAM off, MAS, RAD and MAS+RAD (PyTorch eager, CPU).

Each variant is the same weights with `insert_ram_` applied; times are medians of several
repeats after warm-up, interleaved round-robin over the variants so that drifts of a noisy
machine hit all of them alike, and reported as ratios to the vanilla model (no RAM: fused
scaled-dot-product attention) measured in the same run. Targets (issue 3): MAS ≤ 1.1×,
MAS+RAD ≤ 1.3×. The "explicit" column is the RAM code path with nothing switched on (softmax
written out instead of the fused kernel): the part of the overhead that is not MAS or RAD.
Prints a Markdown table for docs/benchmarks.md.

    python bench/ram_latency.py [--size 128x256] [--batch-size 1] [--repeats 15] [--models a,b]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from datetime import date

import torch
from torch import nn

from harden.models import create_model, list_models
from harden.ram import RAMConfig, insert_ram_

VARIANTS = {
    # the RAM code path with nothing on: what leaving the fused SDPA kernel costs by itself
    "explicit": RAMConfig(mas=False, rad=False, temperature=1.0),
    "MAS": RAMConfig(mas=True, rad=False),
    "RAD": RAMConfig(mas=False, rad=True),
    "MAS+RAD": RAMConfig(mas=True, rad=True),
}


def variants(name: str) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    vanilla = create_model(name, num_classes=19).eval()
    models: dict[str, nn.Module] = {"vanilla": vanilla}
    for label, config in VARIANTS.items():
        model = copy.deepcopy(vanilla)
        insert_ram_(model, config)
        models[label] = model
    return models


def measure(models: dict[str, nn.Module], images: torch.Tensor, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {label: [] for label in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(images)
            model(images)
        for _ in range(repeats):
            for label, model in models.items():
                start = time.perf_counter()
                model(images)
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", default=",".join(list_models(has_attention=True)))
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    images = torch.rand(args.batch_size, 3, height, width)
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
        f"{torch.get_num_threads()} threads · batch {args.batch_size} · {height}×{width} · eager, inference_mode · "
        f"median of {args.repeats}, interleaved"
    )
    print()
    print("| model | vanilla (ms) | explicit softmax × | MAS × | RAD × | MAS+RAD × |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        medians = measure(variants(name), images, args.repeats)
        base = medians["vanilla"]
        ratios = " | ".join(f"{medians[label] / base:.2f}" for label in VARIANTS)
        print(f"| {name} | {base * 1e3:.1f} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
