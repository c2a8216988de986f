"""Clean evaluation: a dataset-level confusion matrix of a model's predictions (used by `harden eval`
and by the training loop's validation; it needs nothing of the training loop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from harden.data import SegmentationDataset, collate_pad
from harden.metrics import ConfusionMatrix


def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    workers: int = 0,
    indices: Sequence[int] | None = None,
) -> ConfusionMatrix:
    """Predict every image (or those at `indices`: one process's share) by the argmax of the
    logits and accumulate one confusion matrix.

    The model is put in eval mode and returned to its previous mode afterwards.
    """
    images = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=collate_pad, num_workers=workers)
    confusion = ConfusionMatrix(dataset.num_classes)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, labels in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
                logits = model(images.to(device))
                confusion.update(logits.argmax(1).cpu(), labels)
    finally:
        model.train(was_training)
    return confusion
