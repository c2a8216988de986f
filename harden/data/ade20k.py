"""ADE20K (ADEChallengeData2016): images/{training,validation}/*.jpg, annotations/…/*.png.

Label 0 ("other") becomes the ignore index; 1..150 become class ids 0..149.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harden.data.base import FileSegmentationDataset, require_dir, require_nonempty
from harden.data.classes import ADE20K_CLASSES, IGNORE_INDEX
from harden.errors import InputError

_SPLIT_DIRS = {"train": "training", "val": "validation"}


def ade20k_label_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    return lut


def ade20k(root: str | Path, split: str = "train") -> FileSegmentationDataset:
    root = Path(root)
    if split not in _SPLIT_DIRS:
        raise InputError(f"ADE20K has splits {tuple(_SPLIT_DIRS)}, not {split!r}")
    hint = "Point --data ade20k:PATH at ADEChallengeData2016 (holding images/ and annotations/)."
    images_dir = require_dir(root / "images" / _SPLIT_DIRS[split], "ADE20K images", hint)
    labels_dir = require_dir(root / "annotations" / _SPLIT_DIRS[split], "ADE20K annotations", hint)
    pairs = []
    for image in sorted(images_dir.glob("*.jpg")):
        label = labels_dir / f"{image.stem}.png"
        if not label.is_file():
            raise InputError(f"{image}: its annotation {label} is missing")
        pairs.append((image, label))
    require_nonempty(pairs, images_dir, split)
    return FileSegmentationDataset(pairs, ade20k_label_lut(), ADE20K_CLASSES, "ade20k")
