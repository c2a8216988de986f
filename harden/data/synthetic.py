"""The built-in synthetic street-scene dataset: the embedded default, no download needed.

Scene i of split s with seed k is rendered from `numpy.random.default_rng([k, s, i])`, so every
image is reproducible on its own, train and val never share a scene, and a dataset of any size
is available offline. Rendered scenes are cached in memory as uint8 (~130 kB each at 128×256).
"""

from __future__ import annotations

import numpy as np
import torch

from harden.data.base import SegmentationDataset
from harden.data.classes import CITYSCAPES_CLASSES
from harden.data.synthetic_scene import render_scene
from harden.errors import InputError

SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = (128, 256)
DEFAULT_NUM_IMAGES = {"train": 400, "val": 100, "test": 100}


class SyntheticStreets(SegmentationDataset):
    """Procedural street scenes labelled with Cityscapes train IDs (19 classes, 11 drawn).

    Args:
        split: "train", "val" or "test" — independent random streams.
        size: (height, width) of the images; both at least 32.
        num_images: number of scenes; None means the split's default (400 / 100 / 100).
        seed: dataset seed; the same seed gives the same images on every machine.
    """

    name = "synthetic"
    class_names = CITYSCAPES_CLASSES

    def __init__(
        self,
        split: str = "train",
        size: tuple[int, int] = DEFAULT_SIZE,
        num_images: int | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLIT_STREAMS:
            raise InputError(f"synthetic data has splits {tuple(SPLIT_STREAMS)}, not {split!r}")
        if min(size) < 32:
            raise InputError(f"synthetic image size must be at least 32×32, got {size[0]}×{size[1]}")
        num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        if num_images < 1:
            raise InputError(f"the synthetic {split} split needs at least one image, got {num_images}")
        self.split = split
        self.size = (int(size[0]), int(size[1]))
        self.num_images = num_images
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        if index not in self._cache:
            rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index])
            self._cache[index] = render_scene(rng, *self.size)
        image, label = self._cache[index]
        image_t = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        return image_t, torch.from_numpy(label.astype(np.int64))
