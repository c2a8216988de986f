"""How long `harden --help` takes, against a bare Python start in the same run.

Each figure is the median of several fresh processes (these machines are noisy). The target of
issue 22 is < 0.5 s for `harden --help` and `harden verify --help`; a shell completion request
costs the same as `--help` (click resolves it before any command runs).

    python bench/cli_startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "harden --help": ["harden", "--help"],
    "harden verify --help": ["harden", "verify", "--help"],
    "harden attack --help": ["harden", "attack", "--help"],
    "completion (harden ver<TAB>)": ["harden"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}


def median_seconds(command: list[str], repeats: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms the file cache and is dropped
        start = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    harden = shutil.which("harden") or os.path.join(os.path.dirname(sys.executable), "harden")
    print(f"{'command':<40} {'median s':>9} {'× python':>9}")
    baseline = None
    for label, command in COMMANDS.items():
        env = dict(os.environ)
        if label.startswith("completion"):
            env.update(_HARDEN_COMPLETE="bash_complete", COMP_WORDS="harden ver", COMP_CWORD="1")
        command = [harden if part == "harden" else part for part in command]
        seconds = median_seconds(command, args.repeats, env)
        baseline = baseline or seconds
        print(f"{label:<40} {seconds:>9.3f} {seconds / baseline:>9.1f}")


if __name__ == "__main__":
    main()
