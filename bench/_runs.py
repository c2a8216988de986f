"""Shared by the bench scripts: run `harden` quietly, the small RAM run they measure, and code run
from another git revision of harden (before/after comparisons in the same run)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def harden(*args: str) -> None:
    """`python -m harden ARGS`, output discarded; raises if it fails."""
    subprocess.run([sys.executable, "-m", "harden", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip


def small_ram_run(out: Path, val_images: int) -> Path:
    """segformer_tiny with MAS + RAD, 12 epochs on 128 synthetic 64×128 scenes (about a minute)."""
    size = ["--image-size", "64x128", "--train-images", "128", "--val-images", str(val_images)]
    harden("train", "--model", "segformer_tiny", "--ram", "--epochs", "12", *size, "--no-progress", "--out", str(out))
    return out


def run_at_revision(rev: str, code: str) -> None:
    """Run Python `code` with harden imported from a git worktree of `rev` (bench/ on the path,
    as this checkout has it); the worktree is removed afterwards."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)  # fmt: skip
        try:
            prelude = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import harden; "
                       f"assert harden.__file__.startswith({str(tree)!r}), harden.__file__\n")  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(tree)}
            subprocess.run([sys.executable, "-c", prelude + code], check=True, env=env, cwd=tree)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
