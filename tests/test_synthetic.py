import numpy as np
import pytest
import torch

from harden.data import SyntheticStreets, open_dataset
from harden.data.classes import CITYSCAPES_CLASSES
from harden.data.synthetic_scene import SYNTHETIC_CLASS_IDS, render_scene
from harden.errors import InputError


def test_same_seed_same_scene_different_seed_different_scene():
    a = render_scene(np.random.default_rng(7), 64, 128)
    b = render_scene(np.random.default_rng(7), 64, 128)
    c = render_scene(np.random.default_rng(8), 64, 128)
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_items_are_images_in_unit_range_with_cityscapes_train_ids():
    ds = SyntheticStreets("train", size=(64, 128), num_images=4)
    image, label = ds[0]
    assert image.shape == (3, 64, 128)
    assert image.dtype == torch.float32
    assert label.shape == (64, 128)
    assert label.dtype == torch.int64
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(label.unique().tolist()) <= set(SYNTHETIC_CLASS_IDS)
    assert ds.num_classes == len(CITYSCAPES_CLASSES) == 19


def test_train_and_val_never_share_a_scene():
    train = SyntheticStreets("train", size=(64, 128), num_images=3)
    val = SyntheticStreets("val", size=(64, 128), num_images=3)
    for i in range(3):
        assert not torch.equal(train[i][0], val[i][0])


def test_dataset_seed_changes_images_and_is_reproducible():
    a = SyntheticStreets("train", size=(64, 128), num_images=2, seed=0)[1][0]
    b = SyntheticStreets("train", size=(64, 128), num_images=2, seed=0)[1][0]
    c = SyntheticStreets("train", size=(64, 128), num_images=2, seed=1)[1][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_scenes_hold_the_street_classes_in_plausible_places():
    counts = np.zeros(256)
    sky_top = road_bottom = 0
    for i in range(40):
        _, label = render_scene(np.random.default_rng(i), 96, 192)
        counts += np.bincount(label.ravel(), minlength=256)
        sky_top += (label[:5] == 10).mean()
        road_bottom += (label[-5:] == 0).mean()
    present = {c for c in SYNTHETIC_CLASS_IDS if counts[c] > 0}
    assert present == set(SYNTHETIC_CLASS_IDS), "every synthetic class should appear in 40 scenes"
    assert road_bottom / 40 > 0.3  # road is at the bottom, sky at the top (perspective street)
    assert (counts[0] + counts[1]) > counts[11]  # ground dominates people
    assert sky_top / 40 < 1.0  # buildings/trees occlude the sky


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "nope"}, "splits"),
        ({"size": (16, 16)}, "at least 32"),
        ({"num_images": 0}, "at least one"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        SyntheticStreets(**kwargs)


def test_open_dataset_specs():
    assert isinstance(open_dataset("synthetic", "val", size=(64, 64), num_images=2), SyntheticStreets)
    with pytest.raises(InputError, match="unknown dataset"):
        open_dataset("kitti:/x", "train")
    with pytest.raises(InputError, match="needs a path"):
        open_dataset("voc", "train")
    with pytest.raises(InputError, match="takes no path"):
        open_dataset("synthetic:/x", "train")
