"""Export, verify and attack at a fixed seed, against a baseline revision of harden: same figures?

    python bench/refactor_before_after.py --baseline ed3f243

For refactors that must not change a result (issue 35: the typed manifest and report, the
renderers split from computation). Trains one tiny segformer_tiny with MAS + RAD (1 epoch on 16
synthetic 64×64 scenes, seconds), then with this checkout and with harden at git revision REV
(a temporary worktree, run as `python -m harden` with the worktree first on PYTHONPATH):
`harden export --precision int8`, `harden verify` on the int8 file with its graph twin and the
source run as twins (fgsm,pgd, ε 4/255, 3 iterations, EOT 2, 4 images), and `harden attack` on
the run (fgsm,pgd, 3 iterations). Then compares manifest.json, verify.json and attack.json key by
key, leaving out only what names the machine, the moment or the folder (timestamps, seconds,
versions, paths, the command line). Prints every difference, and "identical" when there is none;
exit status 1 when something differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# what names the machine, the moment or the folder, not the computation
VOLATILE = frozenset({"created", "seconds", "machine", "versions", "harden_source", "command", "dir", "run_dir",
                      "out"})  # fmt: skip


def harden_at(tree: Path | None, *args: str) -> None:
    """`python -m harden ARGS` from `tree` (None: this checkout); raises with its output if it fails."""
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else dict(os.environ)
    done = subprocess.run([sys.executable, "-m", "harden", *args], env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode not in (0, 1, 3):  # 1 fail, 3 inconclusive: still a report to compare
        raise RuntimeError(f"harden {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def measure(tree: Path | None, run: Path, out: Path) -> dict[str, Any]:
    """The three JSON records, made by harden from `tree`."""
    export = out / "export"
    harden_at(tree, "export", str(run), "--out", str(export), "--precision", "int8", "--calib-images", "4",
              "--parity-images", "2")  # fmt: skip
    common = ["--eps", "4/255", "--iters", "3", "--eot", "2", "--images", "4", "--seed", "0", "--no-progress"]
    harden_at(tree, "verify", str(export), "--twin", "graph", "--twin", str(run), "--attack", "fgsm,pgd",
              "--draws", "2", "--out", str(out / "verify"), "--no-evidence", *common)  # fmt: skip
    harden_at(tree, "attack", str(run), "--attack", "fgsm,pgd", "--draws", "2", "--out", str(out / "attack"), *common)
    return {
        "manifest.json": json.loads((export / "manifest.json").read_text()),
        "verify.json": json.loads((out / "verify" / "verify.json").read_text()),
        "attack.json": json.loads((out / "attack" / "attack.json").read_text()),
    }


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Every place where the two JSON values differ, keys in VOLATILE left out."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key in VOLATILE:
                continue
            if key not in before or key not in after:
                found.append(f"{where}.{key}: only in {'after' if key in after else 'before'}")
            else:
                found += differences(before[key], after[key], f"{where}.{key}")
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} items before, {len(after)} after"]
        pairs = enumerate(zip(before, after, strict=True))
        return [d for i, (b, a) in pairs for d in differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r:.60} before, {after!r:.60} after"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the git revision to compare with (e.g. HEAD~3)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="harden-before-after-") as tmp:
        work = Path(tmp)
        run = work / "run"
        harden_at(None, "train", "--model", "segformer_tiny", "--ram", "--epochs", "1", "--image-size", "64x64",
                  "--train-images", "16", "--val-images", "4", "--no-progress", "--out", str(run))  # fmt: skip
        after = measure(None, run, work / "after")
        tree = work / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), args.baseline], check=True,
                       capture_output=True)  # fmt: skip
        try:
            before = measure(tree, run, work / "before")
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
    failed = False
    for name in after:
        found = differences(before[name], after[name])
        failed |= bool(found)
        print(f"{name}: " + ("identical" if not found else f"{len(found)} differences"))
        for line in found[:40]:
            print("   ", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
