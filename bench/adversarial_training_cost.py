"""Epoch time of adversarial training with k attack steps, as a ratio to a clean epoch.

PGD-AT crafts with k forward + input-gradient passes per step and then trains with one
forward + backward pass, so with the whole batch attacked an epoch should cost about k + 1
clean epochs (target ≤ k + 1.2); with half the batch attacked (SAT, DDC-AT's default) about
k/2 + 1. Every configuration trains one epoch from the same seed; configurations are
interleaved round-robin and each figure is the median of `--repeats` runs of the optimisation
steps alone (`train_seconds` in metrics.jsonl: validation excluded).

    python bench/adversarial_training_cost.py [--model segformer_tiny] [--repeats 3] [--steps 1,3,5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import date
from pathlib import Path

import torch

from harden.training import TrainConfig, prepare_run, train


def one_epoch(model: str, adv: str | None, steps: int, ratio: float, size: tuple[int, int], images: int) -> float:
    config = TrainConfig(
        epochs=1, image_size=size, train_images=images, val_images=2, batch_size=8, adv=adv, adv_steps=steps,
        adv_ratio=ratio,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_config, config = prepare_run(Path(tmp), model, config, {}, resume=False, overwrite=False)
        train(tmp, model_config, config, progress=False, log=lambda m: None)
        row = json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[-1])
    return float(row["train_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segformer_tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", default="1,3,5")
    parser.add_argument("--image-size", default="64x128")
    parser.add_argument("--images", type=int, default=64, help="training images per epoch")
    args = parser.parse_args()
    height, width = (int(v) for v in args.image_size.split("x"))
    ks = [int(k) for k in args.steps.split(",")]
    configs: list[tuple[str, str | None, int, float]] = [("clean", None, 1, 1.0)]
    configs += [(f"pgd k={k} all", "pgd", k, 1.0) for k in ks]
    configs += [(f"pgd k={k} half", "pgd", k, 0.5) for k in ks]
    configs += [("ddcat k=3 half", "ddcat", 3, 0.5)]
    times: dict[str, list[float]] = {name: [] for name, *_ in configs}
    for _ in range(args.repeats):
        for name, adv, k, ratio in configs:
            times[name].append(one_epoch(args.model, adv, k, ratio, (height, width), args.images))
    clean = statistics.median(times["clean"])
    print(
        f"\n`python bench/adversarial_training_cost.py --model {args.model} --repeats {args.repeats} "
        f"--steps {args.steps}` — {date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.images} images of {args.image_size}, batch 8\n"
    )
    print("| configuration | epoch s (median) | ratio to clean | expected | target |")
    print("|---|---|---|---|---|")
    for name, adv, k, ratio in configs:
        median = statistics.median(times[name])
        expected = "1" if adv is None else f"{k * ratio + 1:g}"
        target = f"≤ {k + 1.2:g}" if adv == "pgd" and ratio == 1.0 else ""
        print(f"| {name} | {median:.2f} | {median / clean:.2f}× | {expected} | {target} |")


if __name__ == "__main__":
    main()
