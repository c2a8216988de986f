"""Clean accuracy with RAM: fine-tune one trained model as baseline, +MAS, +RAD, +MAS+RAD.

Trains (or reuses) a base model on the synthetic street scenes, then fine-tunes it for the
same number of epochs under each RAM setting, the baseline included (so every variant has
seen the same amount of training). Reports validation mIoU and pixel accuracy; for RAD variants,
which are random at evaluation too, the mean and range over several seeded evaluation draws.
The robustness side comes with the attack suite. Prints a Markdown table for docs/benchmarks.md.

    python bench/ram_finetune.py [--model segformer_tiny] [--base-epochs 30] [--tune-epochs 10] [--out runs/ram-ft]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from harden.data import open_dataset
from harden.ram import RAMConfig, fixed_rad_seed
from harden.training import TrainConfig, evaluate, load_model, prepare_run, train

VARIANTS = {
    "baseline": None,
    "+MAS": RAMConfig(mas=True, rad=False),
    "+RAD": RAMConfig(mas=False, rad=True),
    "+MAS+RAD": RAMConfig(mas=True, rad=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segformer_tiny")
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--tune-epochs", type=int, default=10)
    parser.add_argument("--tune-lr", type=float, default=3e-4)
    parser.add_argument("--draws", type=int, default=5, help="evaluation draws for RAD variants")
    parser.add_argument("--out", type=Path, default=Path("runs/ram-ft"))
    args = parser.parse_args()

    base = args.out / "base"
    if not (base / "model.safetensors").exists():
        config = TrainConfig(epochs=args.base_epochs)
        model_config, config = prepare_run(base, args.model, config, {}, resume=False, overwrite=True)
        train(base, model_config, config, progress=False, log=lambda line: None)

    val = open_dataset("synthetic", "val")
    rows = []
    for label, ram in VARIANTS.items():
        run_dir = args.out / label.strip("+").replace("+", "-").lower()
        config = TrainConfig(epochs=args.tune_epochs, lr=args.tune_lr, init_from=str(base))
        ram_dict = ram.to_dict() if ram is not None else None
        model_config, config = prepare_run(run_dir, args.model, config, {}, ram=ram_dict, resume=False, overwrite=True)
        started = time.perf_counter()
        train(run_dir, model_config, config, progress=False, log=lambda line: None)
        seconds = time.perf_counter() - started
        model, _ = load_model(run_dir)
        draws = args.draws if ram is not None and ram.rad else 1
        scores = []
        for seed in range(draws):
            with torch.no_grad(), fixed_rad_seed(model, seed):
                confusion = evaluate(model, val, batch_size=8, device="cpu", progress=False)
            scores.append((confusion.miou(), confusion.pixel_accuracy()))
        mious = [s[0] for s in scores]
        rows.append(
            {
                "variant": label,
                "miou_mean": statistics.mean(mious),
                "miou_min": min(mious),
                "miou_max": max(mious),
                "pixel_accuracy_mean": statistics.mean(s[1] for s in scores),
                "draws": draws,
                "tune_seconds": seconds,
            }
        )
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(
        f"{date.today()} · {args.model} · base {args.base_epochs} epochs, fine-tune {args.tune_epochs} epochs at "
        f"lr {args.tune_lr:g} · synthetic val (100 scenes, 128×256) · torch {torch.__version__}"
    )
    print()
    print("| variant | val mIoU | range over RAD draws | pixel acc | fine-tune (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        spread = f"{r['miou_min']:.4f}–{r['miou_max']:.4f} ({r['draws']} draws)" if r["draws"] > 1 else "–"
        print(
            f"| {r['variant']} | {r['miou_mean']:.4f} | {spread} | {r['pixel_accuracy_mean']:.4f} | "
            f"{r['tune_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
