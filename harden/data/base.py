"""The dataset interface every loader implements, and the pieces shared by the file loaders.

A dataset item is `(image, label)`: image (3, H, W) float32 in [0, 1], label (H, W) int64 with
training ids and 255 for ignored pixels (docs/design.md §2). Raw label files are converted with a
256-entry lookup table; a raw value mapped to -1 is invalid and raises `InputError` naming the
file, because a silently wrong label poisons every number computed from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from harden.data.classes import IGNORE_INDEX
from harden.data_spec import MAX_IMAGE_PIXELS
from harden.errors import InputError


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Base class: subclasses set `name` and `class_names` and implement `__len__`/`__getitem__`."""

    name: str = "dataset"
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class FileSegmentationDataset(SegmentationDataset):
    """(image file, label file) pairs converted through a label lookup table.

    Args:
        pairs: paths of the images and of their label maps, in a fixed order.
        label_lut: (256,) int64, raw label value → training id, 255 = ignore, -1 = invalid.
        class_names: names of the training ids.
        name: dataset name used in messages.
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        label_lut: np.ndarray,
        class_names: tuple[str, ...],
        name: str,
    ) -> None:
        self.pairs = pairs
        self.label_lut = label_lut
        self.class_names = class_names
        self.name = name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise InputError(
                f"{label_path}: label is {raw.shape[1]}×{raw.shape[0]} pixels but its image "
                f"{image_path.name} is {image.shape[1]}×{image.shape[0]}; they must match"
            )
        label = self.label_lut[raw]
        if (label < 0).any():
            bad = sorted(int(v) for v in np.unique(raw[label < 0]))[:10]
            raise InputError(
                f"{label_path}: label values {bad} are not valid {self.name} class ids "
                f"(expected raw ids that map to 0..{self.num_classes - 1} or {IGNORE_INDEX}); "
                "is this the right dataset and label file type?"
            )
        image_t = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        return image_t, torch.from_numpy(label)


def read_image(path: Path) -> np.ndarray:
    """An RGB image file as (H, W, 3) uint8; any decoding failure names the file."""
    with _open_bounded(path, "image") as img:
        if img.mode.startswith("I") or img.mode == "F":
            raise InputError(
                f"{path}: a {img.mode} (16-bit or float) image; convert it to 8-bit RGB first — reading it as "
                "8-bit would clip it"
            )
        return _decoded(path, "image", lambda: np.array(img.convert("RGB")))


def read_label(path: Path) -> np.ndarray:
    """A single-channel or palette label file as (H, W) uint8 raw values."""
    with _open_bounded(path, "label") as img:
        if img.mode not in ("L", "P", "I;16", "I"):
            raise InputError(
                f"{path}: label image has mode {img.mode}; expected a single-channel or "
                "palette PNG of class ids (colour-coded labels must be converted to ids first)"
            )
        raw = _decoded(path, "label", lambda: np.asarray(img))
    if raw.max(initial=0) > 255:
        raise InputError(f"{path}: label values up to {int(raw.max())} exceed 255")
    return raw.astype(np.uint8)


@contextlib.contextmanager
def _open_bounded(path: Path, what: str) -> Iterator[Image.Image]:
    """The file opened by PIL (the header only), refused before decoding when it is larger than
    MAX_IMAGE_PIXELS — a decompression bomb — or not an image; every failure names the file."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:  # PIL's own guard, far beyond ours, fires while opening
        raise InputError(f"{path}: {what} exceeds the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit ({err})") from err
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"{path}: cannot read {what} ({err}); replace or remove the file") from err
    with img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise InputError(
                f"{path}: {what} of {img.width}×{img.height} pixels exceeds the {MAX_IMAGE_PIXELS / 1e6:.0f} MP "
                "limit (a decompression bomb, or an image to downscale first)"
            )
        yield img


def _decoded(path: Path, what: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return decode()
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: {what} exceeds the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit ({err})") from err
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:  # truncated or corrupt data
        raise InputError(f"{path}: cannot read {what} ({err}); replace or remove the file") from err


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what} not found: {path} does not exist or is not a directory. {hint}")
    return path


def require_nonempty(pairs: list[tuple[Path, Path]], where: Path, split: str) -> None:
    if not pairs:
        raise InputError(f"no images found for split {split!r} under {where}; check the path and split")


def collate_pad(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a batch, padding smaller items bottom/right with 0 (image) and 255 (label).

    Evaluation images of real datasets differ in size; padded pixels are ignored by metrics.
    """
    height = max(img.shape[1] for img, _ in batch)
    width = max(img.shape[2] for img, _ in batch)
    images = torch.zeros(len(batch), 3, height, width)
    labels = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for i, (img, lab) in enumerate(batch):
        images[i, :, : img.shape[1], : img.shape[2]] = img
        labels[i, : lab.shape[0], : lab.shape[1]] = lab
    return images, labels
