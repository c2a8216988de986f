"""Wall time of a `harden verify` run split into attack / engine evaluation / checks / reporting.

Trains a small segformer_tiny with MAS + RAD on synthetic scenes, exports it (fp32 and int8),
then verifies each export several times and prints the median seconds of each phase and the
ratio (engine evaluation + parity) / attack time — target under 10 % (issue 8); "state" is
saving the resumable state after every batch. "engine" is
every prediction the verification makes outside the attacks themselves: the engine's and the
twins' clean and adversarial predictions over the RAD draws. Prints Markdown for
docs/benchmarks.md.

    python bench/verify_cost.py [--repeats 3] [--images 8] [--iters 10] [--queries 100]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from harden.cli import cli
from harden.data import open_dataset
from harden.runtime.engines import open_engine
from harden.runtime.gates import Gates, evaluate_gates
from harden.runtime.report import write_reports
from harden.runtime.twins import load_twins, open_deployment
from harden.runtime.verify import VerifyOptions, verify


def _cli(*args: object) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        run = root / "run"
        _cli("train", "--model", "segformer_tiny", "--ram", "--epochs", "3", "--image-size", "64x128",
             "--train-images", "32", "--val-images", "8", "--no-progress", "--out", run)  # fmt: skip
        rows = []
        for precision in ("fp32", "int8"):
            out = root / precision
            _cli("export", run, "--out", out, "--precision", precision, "--calib-images", "8", "--parity-images", "2")
            deployment = open_deployment(out)
            twins = load_twins(["graph", str(run)], deployment)
            dataset = open_dataset("synthetic", "val", size=(64, 128), num_images=args.images, seed=0)
            options = VerifyOptions(attacks=("fgsm", "pgd"), steps=args.iters, queries=args.queries)
            phases: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                with open_engine(deployment.artefact) as engine:
                    result = verify(deployment, engine, twins, dataset, options, progress=False,
                                    state_file=root / "verify.state")  # fmt: skip
                assert result is not None
                start = time.perf_counter()
                gates = evaluate_gates(result, Gates.for_precision(precision), list(options.eps_values))
                write_reports(result, gates, {}, [], root / "report", palette=_palette(dataset.num_classes))
                for phase, seconds in {**result.seconds, "reporting": time.perf_counter() - start}.items():
                    phases.setdefault(phase, []).append(seconds)
            median = {phase: statistics.median(values) for phase, values in phases.items()}
            rows.append((precision, median))
    print(f"`python bench/verify_cost.py --repeats {args.repeats} --images {args.images} --iters {args.iters} "
          f"--queries {args.queries}` — {date.today()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; twins graph + source, attacks fgsm,pgd at 4/255, 8/255, "
          "3 RAD draws, EOT 8, 64×128 images\n")  # fmt: skip
    print("| export | attack s | engine + parity s | checks + audits s | state saving s | reporting s | "
          "engine / attack |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for precision, m in rows:
        ratio = m["engine_inference"] / m["attack_crafting"]
        print(
            f"| {precision} | {m['attack_crafting']:.1f} | {m['engine_inference']:.1f} | "
            f"{m['checks_and_audits']:.1f} | {m['state_saving']:.2f} | {m['reporting']:.1f} | {ratio:.1%} |"
        )


def _palette(classes: int) -> np.ndarray:
    from harden.visualize import palette_for

    return palette_for("synthetic", classes)


if __name__ == "__main__":
    main()
