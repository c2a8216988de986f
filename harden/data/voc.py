"""Pascal VOC 2012 segmentation: JPEGImages/*.jpg with SegmentationClass/*.png palette labels.

The split lists are ImageSets/Segmentation/{train,val,trainval}.txt. Palette indices are the 21
class ids; 255 (the object borders) is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harden.data.base import FileSegmentationDataset, require_dir, require_nonempty
from harden.data.classes import IGNORE_INDEX, VOC_CLASSES
from harden.errors import InputError


def voc_label_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[: len(VOC_CLASSES)] = np.arange(len(VOC_CLASSES))
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def voc(root: str | Path, split: str = "train") -> FileSegmentationDataset:
    root = Path(root)
    if (root / "VOC2012").is_dir():  # accept VOCdevkit/ as well as VOCdevkit/VOC2012/
        root = root / "VOC2012"
    hint = "Point --data voc:PATH at VOCdevkit/VOC2012 (holding JPEGImages/ and SegmentationClass/)."
    images_dir = require_dir(root / "JPEGImages", "VOC images", hint)
    labels_dir = require_dir(root / "SegmentationClass", "VOC labels", hint)
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise InputError(f"VOC split list {split_file} not found; splits are train, val, trainval")
    pairs = []
    for name in split_file.read_text().split():
        image, label = images_dir / f"{name}.jpg", labels_dir / f"{name}.png"
        for path in (image, label):
            if not path.is_file():
                raise InputError(f"{split_file} lists {name!r} but {path} is missing")
        pairs.append((image, label))
    require_nonempty(pairs, split_file, split)
    return FileSegmentationDataset(pairs, voc_label_lut(), VOC_CLASSES, "voc")
