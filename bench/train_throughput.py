"""Training throughput of every tiny model: forward+backward+optimizer step, and forward alone.

Medians of several timed repeats after warm-up, images per second, and each model's time as a
ratio to the CNN baseline (pspnet_tiny) measured in the same run — ratios survive a noisy
machine better than absolute numbers. Prints a Markdown table for docs/benchmarks.md.

    python bench/train_throughput.py [--batch-size 8] [--size 128x256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
from datetime import date

import torch
import torch.nn.functional as F
from _timing import median_seconds  # bench/ is the script's directory

from harden.models import create_model, list_models

BASELINE = "pspnet_tiny"


def measure(name: str, batch: int, size: tuple[int, int], repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=19)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, *size)
    labels = torch.randint(0, 19, (batch, *size))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    model.train()
    train_s = median_seconds(train_step, repeats)
    model.eval()
    forward_s = median_seconds(forward, repeats)
    return train_s, forward_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default=",".join(list_models(tiny=True)))
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    names = args.models.split(",")
    if BASELINE not in names:
        names.insert(0, BASELINE)

    results = {name: measure(name, args.batch_size, size, args.repeats) for name in names}  # type: ignore[arg-type]
    base_train, base_fwd = results[BASELINE]
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
        f"{torch.get_num_threads()} threads · batch {args.batch_size} · {size[0]}×{size[1]} · "
        f"median of {args.repeats}"
    )
    print()
    print("| model | params | train step (ms) | train images/s | × baseline | forward (ms) | × baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, (train_s, fwd_s) in results.items():
        params = sum(p.numel() for p in create_model(name, 19).parameters()) / 1e6
        print(
            f"| {name} | {params:.2f}M | {train_s * 1e3:.0f} | {args.batch_size / train_s:.1f} | "
            f"{train_s / base_train:.2f} | {fwd_s * 1e3:.0f} | {fwd_s / base_fwd:.2f} |"
        )


if __name__ == "__main__":
    main()
