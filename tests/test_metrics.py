import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harden.errors import InputError
from harden.metrics import ConfusionMatrix, iou_ratio, pixel_accuracy_excluding

K = 4
labels_strategy = arrays(np.int64, (2, 5, 6), elements=st.sampled_from([0, 1, 2, 3, 255]))
preds_strategy = arrays(np.int64, (2, 5, 6), elements=st.integers(0, K - 1))


def _direct_iou(pred, target, k):
    valid = target != 255
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (target == c) & valid)
        union = np.sum(((pred == c) | (target == c)) & valid)
        ious.append(inter / union if union else math.nan)
    return np.array(ious)


@settings(max_examples=60, deadline=None)
@given(pred=preds_strategy, target=labels_strategy)
def test_iou_and_accuracy_match_direct_formulas(pred, target):
    cm = ConfusionMatrix(K)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    expected = _direct_iou(pred, target, K)
    np.testing.assert_allclose(cm.per_class_iou(), expected, equal_nan=True)
    valid = target != 255
    if valid.any():
        assert cm.pixel_accuracy() == pytest.approx(np.mean(pred[valid] == target[valid]))
        assert cm.miou() == pytest.approx(np.nanmean(expected))


@settings(max_examples=30, deadline=None)
@given(p1=preds_strategy, t1=labels_strategy, p2=preds_strategy, t2=labels_strategy)
def test_accumulation_is_over_the_dataset_not_a_mean_of_batches(p1, t1, p2, t2):
    whole = ConfusionMatrix(K)
    whole.update(torch.from_numpy(np.concatenate([p1, p2])), torch.from_numpy(np.concatenate([t1, t2])))
    parts = ConfusionMatrix(K)
    parts.update(torch.from_numpy(p1), torch.from_numpy(t1))
    parts.update(torch.from_numpy(p2), torch.from_numpy(t2))
    assert np.array_equal(whole.matrix, parts.matrix)


def test_dataset_miou_differs_from_mean_of_image_mious():
    # Image 1: big class-0 region right; image 2: tiny class-1 region wrong.
    t1, p1 = torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10, dtype=torch.long)
    t2, p2 = torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10, dtype=torch.long)
    t2[0, 0, 0] = 1
    cm = ConfusionMatrix(2)
    cm.update(p1, t1)
    cm.update(p2, t2)
    assert cm.miou() == pytest.approx((199 / 200 + 0) / 2)


def test_out_of_range_labels_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(InputError, match=r"0\.\.2"):
        cm.update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 3, 255]))


def test_summary_is_json_friendly_with_none_for_absent_classes():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    summary = cm.summary(("a", "b", "c"))
    assert summary["per_class_iou"] == {"a": 1.0, "b": 1.0, "c": None}
    assert summary["miou"] == 1.0


def test_iou_ratio_and_masked_accuracy():
    assert iou_ratio(0.3, 0.6) == pytest.approx(0.5)
    with pytest.raises(InputError):
        iou_ratio(0.3, 0.0)
    pred = torch.tensor([[0, 0, 1, 1]])
    target = torch.tensor([[0, 1, 1, 255]])
    patch = torch.tensor([[False, True, False, False]])
    assert pixel_accuracy_excluding(pred, target, patch) == 1.0  # the wrong pixel is under the patch
    with pytest.raises(InputError, match="no labelled pixels"):
        pixel_accuracy_excluding(pred, target, torch.ones_like(patch))
