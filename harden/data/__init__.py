"""Datasets: the built-in synthetic street scenes, loaders for Cityscapes, VOC and ADE20K, and
an image folder paired with a mask folder.

`open_dataset(spec, split)` (spec: `harden.data_spec.DATA_SPEC_HELP`) is the one entry point
the CLI uses; `Augmented` adds the training transforms with reproducible randomness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harden.data.ade20k import ade20k
from harden.data.base import FileSegmentationDataset, SegmentationDataset, collate_pad
from harden.data.cityscapes import cityscapes
from harden.data.classes import IGNORE_INDEX
from harden.data.folder import folder
from harden.data.synthetic import SyntheticStreets
from harden.data.transforms import TrainAugment
from harden.data.voc import voc
from harden.data_spec import DATA_SPEC_HELP
from harden.errors import InputError

__all__ = [
    "IGNORE_INDEX",
    "Augmented",
    "FileSegmentationDataset",
    "SegmentationDataset",
    "SyntheticStreets",
    "TrainAugment",
    "collate_pad",
    "open_dataset",
]

_FILE_LOADERS = {"cityscapes": cityscapes, "voc": voc, "ade20k": ade20k}


def open_dataset(
    spec: str,
    split: str,
    *,
    size: tuple[int, int] | None = None,
    num_images: int | None = None,
    seed: int = 0,
    classes: int | None = None,
) -> SegmentationDataset:
    """Open a dataset split from a spec string.

    Args:
        spec: "synthetic", or "<name>:<path>" for a dataset on disk in its original layout.
        split: "train" or "val" (and whatever else the dataset has).
        size: synthetic only: image (height, width). None means 128×256.
        num_images: synthetic: number of scenes; file datasets: keep only the first N (for quick runs).
        seed: synthetic only: the dataset seed.
        classes: folder only: the number of classes when the spec does not say (the model's).
    """
    kind, _, path = spec.partition(":")
    if kind == "synthetic":
        if path:
            raise InputError(f"--data synthetic takes no path (got {spec!r}); set --image-size instead")
        return SyntheticStreets(split, size or (128, 256), num_images, seed)
    if kind == "folder":
        found = folder(path, classes)
        if num_images is not None:
            found.pairs = found.pairs[:num_images]
        return found
    if kind not in _FILE_LOADERS:
        raise InputError(f"unknown dataset {kind!r} in --data {spec!r}; use {DATA_SPEC_HELP}")
    if not path:
        raise InputError(f"--data {kind} needs a path: --data {kind}:PATH")
    dataset = _FILE_LOADERS[kind](Path(path).expanduser(), split)
    if num_images is not None:
        dataset.pairs = dataset.pairs[:num_images]
    return dataset


class Augmented(SegmentationDataset):
    """A dataset with training augmentation whose randomness depends only on (seed, epoch, index).

    That makes an epoch reproducible regardless of data-loader workers, and a resumed run sees
    exactly the augmentations the uninterrupted run would have seen. Call `set_epoch` each epoch.
    """

    def __init__(self, dataset: SegmentationDataset, augment: TrainAugment, seed: int = 0) -> None:
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.name = dataset.name
        self.class_names = dataset.class_names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        item_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(item_seed))
        return self.augment(image, label, generator)
