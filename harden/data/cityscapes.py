"""Cityscapes: leftImg8bit/{split}/{city}/*_leftImg8bit.png with gtFine/…/*_gtFine_labelIds.png.

The 34 labelIds are converted to the 19 train IDs (others → 255) on load.
"""

from __future__ import annotations

from pathlib import Path

from harden.data.base import FileSegmentationDataset, require_dir, require_nonempty
from harden.data.classes import CITYSCAPES_CLASSES, cityscapes_label_to_train_lut
from harden.errors import InputError

SPLITS = ("train", "val", "test")


def cityscapes(root: str | Path, split: str = "train") -> FileSegmentationDataset:
    root = Path(root)
    if split not in SPLITS:
        raise InputError(f"Cityscapes has splits {SPLITS}, not {split!r}")
    hint = "Point --data cityscapes:PATH at the folder holding leftImg8bit/ and gtFine/."
    images_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes images", hint)
    labels_dir = require_dir(root / "gtFine" / split, "Cityscapes fine labels", hint)
    pairs = []
    for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise InputError(f"{image}: its label file {label} is missing")
        pairs.append((image, label))
    require_nonempty(pairs, images_dir, split)
    return FileSegmentationDataset(pairs, cityscapes_label_to_train_lut(), CITYSCAPES_CLASSES, "cityscapes")
