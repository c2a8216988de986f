"""What a verdict is traced to: the exact images (ids and sha256 of their pixels and labels),
whether they overlap the int8 calibration images, and the harden source it ran from.

verify.json and replay.json both record this (safety cases such as ISO/PAS 8800 and UL 4600 ask
that a verdict name its data and tools down to the bytes).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from harden.data import SegmentationDataset
from harden.runtime.evidence import image_sha256
from harden.runtime.twins import Deployment


def data_record(dataset: SegmentationDataset, images: int, deployment: Deployment) -> dict[str, Any]:
    """The first `images` images of `dataset` as verified: source, ids and sha256 each, and
    whether they are disjoint from the export's calibration images (when both are known)."""
    hashes, pixels = [], set()
    for i in range(images):
        image, labels = dataset[i]
        hashes.append(image_sha256(image, labels))
        pixels.add(_pixel_sha256(image.numpy()))
    return {
        "source": dataset.name,
        "num_classes": dataset.num_classes,
        "images": [{"id": i, "sha256": h} for i, h in enumerate(hashes)],
        "calibration": calibration_overlap(deployment, pixels),
    }


def _pixel_sha256(image: np.ndarray) -> str:
    """sha256 of an image's pixels as 8-bit values: the calibration images' identity."""
    return hashlib.sha256(np.round(np.asarray(image, dtype=np.float32) * 255).astype(np.uint8).tobytes()).hexdigest()


def calibration_overlap(deployment: Deployment, verified_pixels: set[str]) -> dict[str, Any]:
    """Whether the verified images are disjoint from the int8 calibration images the export
    recorded: by recipe when they come from another data source or split, by pixel hashes when
    they come from the same; "unknown" when the export recorded none (fp32, fp16, unsigned)."""
    recipe = deployment.manifest.calibration() if deployment.manifest is not None else None
    if recipe is None:
        return {"disjoint": None, "detail": "no calibration recorded (not an int8 harden export)"}
    from harden.export.pipeline import calibration_images

    try:
        calibration = calibration_images(recipe)
    except Exception as err:  # the recipe's data is not on this machine: say so rather than guess
        detail = f"calibration images not reproducible here ({err})"
        return {"disjoint": None, "recipe": recipe.to_dict(), "detail": detail}
    pixels = {_pixel_sha256(c[0]) for c in calibration}  # compared at the export's image size
    shared = len(pixels & verified_pixels)
    return {
        "disjoint": shared == 0,
        "recipe": recipe.to_dict(),
        "shared_images": shared,
        "detail": "no verified image is a calibration image" if shared == 0 else
        f"{shared} verified image(s) were also int8 calibration images: the verdict is optimistic for them",
    }  # fmt: skip


def harden_source() -> dict[str, Any]:
    """harden's git commit when it runs from a checkout (and whether the tree had changes), else
    None: a wheel's version alone names it."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}
