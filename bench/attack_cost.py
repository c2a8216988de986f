"""Cost of an attack iteration relative to one forward + backward pass of the same model.

An iteration of a gradient attack is one forward pass, one backward pass to the input, and the
attack's own bookkeeping (loss, step, projection, best-point tracking). The bookkeeping should
cost little next to the gradients: target (issue 4) ≤ 1.1× a bare forward+backward to the input
measured in the same run. Each figure is the median of several repeats; the attacks and the
baseline are interleaved round-robin so a noisy machine's drifts hit all of them alike. SEA's
total time is measured at --sea-iters per member (300 in the paper). Prints Markdown.

    python bench/attack_cost.py [--models pspnet_tiny,segformer_tiny] [--size 128x256] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import torch
import torch.nn.functional as F

from harden.attacks import ThreatModel, create_attack
from harden.models import create_model

ATTACKS = ("pgd", "segpgd", "cospgd", "apgd-ce", "apgd-jsd", "rppgd", "dag")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pspnet_tiny,segformer_tiny")
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=10, help="iterations per timed attack run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sea-iters", type=int, default=30)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    header = f"# attack cost, {date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    print(f"{header}, {torch.get_num_threads()} threads, batch {args.batch_size} at {args.size}, {args.iters} it./run")
    print()
    print("| model | fwd+bwd (ms) | " + " | ".join(ATTACKS) + f" | SEA 4×{args.sea_iters} it. (s) |")
    print("|---|---|" + "---|" * (len(ATTACKS) + 1))
    for name in args.models.split(","):
        measure(name, args, height, width)


def measure(name: str, args: argparse.Namespace, height: int, width: int) -> None:
    model = create_model(name, num_classes=10).eval()
    images = torch.rand(args.batch_size, 3, height, width)
    labels = torch.randint(0, 10, (args.batch_size, height, width))

    def forward_backward() -> None:
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x), labels), x)

    runs: dict[str, Callable[[], object]] = {"fwd+bwd": forward_backward}
    for attack_name in ATTACKS:
        attack = create_attack(attack_name, ThreatModel(4 / 255), steps=args.iters)
        runs[attack_name] = partial(attack, model, images, labels)
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times["fwd+bwd"])
    ratios = [statistics.median(times[a]) / args.iters / base for a in ATTACKS]
    sea = create_attack("sea", ThreatModel(4 / 255), steps=args.sea_iters)
    start = time.perf_counter()
    sea(model, images, labels)
    sea_seconds = time.perf_counter() - start
    print(f"| {name} | {base * 1e3:.1f} | " + " | ".join(f"{r:.2f}×" for r in ratios) + f" | {sea_seconds:.1f} |")


if __name__ == "__main__":
    main()
