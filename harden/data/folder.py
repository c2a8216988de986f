"""An image folder and a mask folder paired by file stem (MMSeg's CustomDataset convention, the
most common in-house layout): `--data folder:IMAGES,MASKS[,CLASSES]`.

Masks are single-channel or palette PNGs of class ids 0..N−1, with 255 ignored. CLASSES is the
number of classes N or a text file of class names, one per line (N = its lines); without it the
caller's default is used (`harden verify` takes the model's). A missing mask, a size mismatch
or an id ≥ N is refused naming the file (`FileSegmentationDataset`). A folder is one split:
`--split` does not apply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harden.data.base import FileSegmentationDataset, require_dir, require_nonempty
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
USAGE = "--data folder:IMAGES,MASKS[,CLASSES] (CLASSES: a number, or a file of class names one per line)"


def folder(spec: str, default_classes: int | None = None) -> FileSegmentationDataset:
    """`spec` is "IMAGES,MASKS[,CLASSES]" (the part after "folder:")."""
    parts = [p for p in spec.split(",") if p]
    if len(parts) not in (2, 3):
        raise InputError(f"--data folder:{spec}: expected {USAGE}")
    images_dir = require_dir(Path(parts[0]).expanduser(), "image folder", USAGE)
    masks_dir = require_dir(Path(parts[1]).expanduser(), "mask folder", USAGE)
    names = _class_names(parts[2] if len(parts) == 3 else None, default_classes)
    masks = {m.stem: m for m in masks_dir.iterdir() if m.suffix.lower() == ".png"}
    pairs = []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in masks:
            raise InputError(f"{image}: no mask {image.stem}.png in {masks_dir}; every image needs its mask")
        pairs.append((image, masks[image.stem]))
    require_nonempty(pairs, images_dir, "folder")
    lut = np.full(256, -1, dtype=np.int64)  # ids ≥ N are invalid: refused naming the mask file
    lut[: len(names)] = np.arange(len(names))
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return FileSegmentationDataset(pairs, lut, names, "folder")


def _class_names(given: str | None, default: int | None) -> tuple[str, ...]:
    if given is None:
        if default is None:
            raise InputError(f"--data folder: say how many classes the masks hold: {USAGE}")
        return tuple(f"class {i}" for i in range(default))
    if given.isdigit():
        count = int(given)
    else:
        path = Path(given).expanduser()
        if not path.is_file():
            raise InputError(f"--data folder: {given!r} is neither a class count nor a file of class names")
        names = tuple(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip())
        count = len(names)
        if 1 <= count <= IGNORE_INDEX:
            return names
    if not 1 <= count <= IGNORE_INDEX:
        raise InputError(f"--data folder: {count} classes; masks hold ids 0..254 (255 is ignored), so 1–255")
    return tuple(f"class {i}" for i in range(count))
