"""Verdict stability across seeds, and the cost of `--images auto` (docs/verdicts.md).

Verifies one int8 export (a `harden demo` directory's, or a quick demo made here) for several
seeds — each seed draws other verification images and other attack starts — in two ways:
fixed `--images N`, and `--images auto --max-images M`. Prints, per seed and mode, the verdict,
the images the verdict used, the gates that did not pass, and the wall time.

    python bench/verdict_stability.py --demo runs/demo --seeds 5
    python bench/verdict_stability.py --demo runs/demo --seeds 5 --quick   # the quick demo's attack settings
    python bench/verdict_stability.py --seeds 5            # makes a quick demo first (≈1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK = ["--eps", "8/255", "--iters", "2", "--queries", "10", "--divergence-steps", "2", "--eot", "2", "--draws", "2"]


def verify(demo: Path, out: Path, seed: int, images: list[str], quick: bool) -> tuple[dict, float]:
    args = [sys.executable, "-m", "harden", "verify", str(demo / "export"), "--artefact", "model.int8.onnx",
            "--twin", "graph", "--twin", str(demo / "run"), "--seed", str(seed), "--no-progress", "--out", str(out),
            "--attack", "fgsm,pgd", *images, *(QUICK if quick else [])]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1, 3):
        raise SystemExit(f"verify exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return json.loads((out / "verify.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=None, help="a `harden demo` output directory")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=2, help="fixed mode: images per verdict")
    parser.add_argument("--max-images", type=int, default=8, help="auto mode: the budget")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the quick demo's attack settings (made here: always)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo
        quick = demo is None or args.quick
        if demo is None:
            demo = Path(tmp) / "demo"
            subprocess.run([sys.executable, "-m", "harden", "demo", "--quick", "--out", str(demo), "--no-progress"],
                           capture_output=True, check=False)  # fmt: skip
        modes = {
            "fixed": ["--images", str(args.images), "--batch-size", str(args.batch_size)],
            "auto": ["--images", "auto", "--max-images", str(args.max_images), "--batch-size", str(args.batch_size)],
        }
        print("| mode | seed | verdict | images used | not passed | seconds |")
        print("|---|---|---|---|---|---|")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for mode, flags in modes.items():
            for seed in range(args.seeds):
                report, seconds = verify(demo, Path(tmp) / f"{mode}-{seed}", seed, flags, quick)
                times[mode].append(seconds)
                undecided = [f"{g['name']} ({g['outcome']})" for g in report["gates"] if not g["passed"]]
                print(f"| {mode} | {seed} | {report['verdict']} | {report['confidence']['images_used']} | "
                      f"{', '.join(undecided) or '—'} | {seconds:.1f} |")  # fmt: skip
        for mode, values in times.items():
            print(f"{mode}: median {statistics.median(values):.1f} s over {len(values)} seeds")


if __name__ == "__main__":
    main()
