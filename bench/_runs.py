"""Shared by the int8 bench scripts: run `harden` quietly, and the small RAM run they measure."""

from __future__ import annotations

import subprocess
import sys
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
