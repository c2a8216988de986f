"""Clean training vs SAT vs DDC-AT vs PGD-AT vs SegPGD-AT vs RP-PGD-AT on the synthetic street scenes.

Every method trains the same model from the same seed for the same number of epochs with the
same training attack (L∞ ε = 0.03, α = 0.01, 3 steps, half of each batch: DDC-AT §6.2), then
is evaluated on the same validation images with PGD and SEA at two radii; the robust mIoU is the
worst case over both attacks per radius (`Evaluation.worst_at`). Prints a Markdown table and
writes the figures as JSON next to the runs.

    python bench/adversarial_training.py [--model segformer_tiny] [--epochs 25] [--train-images 160]
        [--image-size 32x64] [--images 32] [--out runs/at-study]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch

from harden.attacks.evaluate import evaluate_robustness
from harden.attacks.threat import format_eps
from harden.data import open_dataset
from harden.training import TrainConfig, load_model, prepare_run, train

METHODS = [None, "sat", "ddcat", "pgd", "segpgd", "rppgd"]
EPS = [4 / 255, 8 / 255]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segformer_tiny")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--image-size", default="32x64")
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--images", type=int, default=32, help="validation images attacked")
    parser.add_argument("--out", type=Path, default=Path("runs/at-study"))
    args = parser.parse_args()
    height, width = (int(v) for v in args.image_size.split("x"))
    torch.set_num_threads(max(1, torch.get_num_threads()))

    results = []
    for method in METHODS:
        name = method or "clean"
        run_dir = args.out / name
        config = TrainConfig(epochs=args.epochs, image_size=(height, width), train_images=args.train_images, adv=method)
        if not (run_dir / "model.safetensors").exists() or _epochs(run_dir) < args.epochs:
            model_config, config = prepare_run(run_dir, args.model, config, {}, resume=False, overwrite=True)
            started = time.perf_counter()
            train(run_dir, model_config, config, progress=False, log=lambda m: None)
            seconds = time.perf_counter() - started
        else:
            seconds = float("nan")
        model, _ = load_model(run_dir)
        dataset = open_dataset("synthetic", "val", size=(height, width), num_images=args.images)
        evaluation = evaluate_robustness(model, dataset, ["pgd", "sea"], EPS, progress=False)
        clean_miou, clean_pacc = evaluation.clean_scores()
        row = {"method": name, "train_seconds": round(seconds, 1), "clean_miou": clean_miou, "clean_pacc": clean_pacc}
        for eps in EPS:
            for run in evaluation.runs:
                if run.eps == eps and run.attack in ("pgd", "sea"):
                    row[f"{run.attack}_miou@{format_eps(eps)}"] = run.worst().miou
            worst = evaluation.worst_at(eps, kinds=("white-box",))
            assert worst is not None
            row[f"worst_miou@{format_eps(eps)}"] = worst.miou
            row[f"worst_pacc@{format_eps(eps)}"] = worst.pixel_accuracy
        results.append(row)
        print(json.dumps(row), flush=True)

    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\n`python bench/adversarial_training.py --model {args.model} --epochs {args.epochs} --train-images "
        f"{args.train_images} --image-size {args.image_size} --images {args.images}` — {date.today()}\n"
    )
    header = ["method", "train s", "clean mIoU"] + [
        f"{a} mIoU {format_eps(e)}" for e in EPS for a in ("PGD", "SEA", "worst")
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in results:
        cells = [row["method"], f"{row['train_seconds']:.0f}", f"{row['clean_miou']:.3f}"]
        for eps in EPS:
            tag = format_eps(eps)
            cells += [
                f"{row[f'pgd_miou@{tag}']:.3f}",
                f"{row[f'sea_miou@{tag}']:.3f}",
                f"{row[f'worst_miou@{tag}']:.3f}",
            ]
        print("| " + " | ".join(cells) + " |")


def _epochs(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return len(lines)


if __name__ == "__main__":
    main()
