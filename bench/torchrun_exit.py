"""How often a 2-process `harden train --nproc 2` fails, at this checkout and at a baseline revision.

The job is the suite's distributed-training test (tests/test_adversarial_training.py, a tiny
segmenter with SAT on 8 synthetic 32×64 scenes, 2 epochs). Before torchrun ranks ended without
the interpreter's shutdown (harden.torchrun_exit.leave_rank), about 1 run in 35 aborted after
all its work: gloo's worker thread, freeing the tensors of the last gather, could not take the
GIL during shutdown ("terminate called without an active exception", exit -6). A smaller
stand-alone script (gather, then leave) did not reproduce it in 100 runs, so this drives the
real command. The two revisions alternate, so machine load affects both alike.

    python bench/torchrun_exit.py --trials 100 --baseline abe5968
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = ["--model", "segmenter_tiny", "--adv", "sat", "--image-size", "32x64", "--train-images", "8", "--val-images",
       "4", "--batch-size", "4", "--adv-steps", "2", "--epochs", "2", "--no-progress", "--nproc", "2"]  # fmt: skip


def run_job(code: Path, out: Path) -> tuple[int, str]:
    """`harden train JOB` with harden imported from `code`; (exit code, last line on stderr)."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "harden", "train", *JOB, "--out", str(out)]
    result = subprocess.run(args, env=env, cwd=code, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stderr.splitlines() if "terminate called" in line or "Error" in line]
    return result.returncode, lines[0] if lines else ""


def check_imports_from(code: Path) -> None:
    """The runs of a revision really import harden from its tree (PYTHONPATH before the install)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    found = subprocess.run([sys.executable, "-c", "import harden; print(harden.__file__)"], env=env, cwd=code,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not found.startswith(str(code)):
        raise SystemExit(f"harden imports from {found}, not from {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100, help="runs per revision")
    parser.add_argument("--baseline", help="git revision to compare against (run from a git worktree)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this checkout": REPO}
        if args.baseline:
            trees[args.baseline] = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[args.baseline]),
                            args.baseline], check=True, capture_output=True)  # fmt: skip
        try:
            for tree in trees.values():
                check_imports_from(tree)
            failures: dict[str, list[str]] = {name: [] for name in trees}
            started = time.perf_counter()
            for i in range(args.trials):
                for name, tree in trees.items():
                    code, message = run_job(tree, Path(tmp) / f"run-{i}-{len(failures[name])}-{hash(name)}")
                    if code != 0:
                        failures[name].append(f"exit {code}: {message}")
                if (i + 1) % 10 == 0:
                    counts = {name: len(f) for name, f in failures.items()}
                    print(f"{i + 1}/{args.trials} runs: failures {counts}", file=sys.stderr, flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees[args.baseline])],
                               check=False)  # fmt: skip
    print(f"{args.trials} runs per revision, {time.perf_counter() - started:.0f} s")
    for name, failed in failures.items():
        print(f"  {name:14s} failed {len(failed)}/{args.trials}  {sorted(set(failed))}")


if __name__ == "__main__":
    main()
