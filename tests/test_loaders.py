"""Tiny datasets in the real directory layouts and file formats, built under tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harden.data import open_dataset
from harden.data.classes import voc_palette
from harden.errors import InputError


def _rgb(path: Path, h: int = 12, w: int = 16, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, fmt)


def _gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def make_cityscapes(root: Path, label: np.ndarray) -> Path:
    for split in ("train", "val"):
        _rgb(root / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png")
        _gray(root / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", label)
    return root


def make_voc(root: Path, label: np.ndarray) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    _rgb(voc / "JPEGImages" / "2007_000032.jpg", fmt="JPEG")
    path = voc / "SegmentationClass" / "2007_000032.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    img.save(path)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000032\n")
    return root / "VOCdevkit"


def make_ade(root: Path, label: np.ndarray) -> Path:
    ade = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        _rgb(ade / "images" / split / "ADE_x_00000001.jpg", fmt="JPEG")
        _gray(ade / "annotations" / split / "ADE_x_00000001.png", label)
    return ade


def _label(values: list[int]) -> np.ndarray:
    return np.resize(np.array(values), (12, 16))


def test_cityscapes_converts_label_ids_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs", _label([7, 8, 26, 0, 33, 4]))
    image, label = open_dataset(f"cityscapes:{root}", "train")[0]
    assert image.shape == (3, 12, 16)
    assert image.min() >= 0 and image.max() <= 1
    assert set(label.unique().tolist()) == {0, 1, 13, 255, 18}  # road, sidewalk, car, ignored, bicycle


def test_voc_reads_palette_indices_and_keeps_border_ignored(tmp_path):
    root = make_voc(tmp_path, _label([0, 15, 255, 20]))
    ds = open_dataset(f"voc:{root}", "val")
    _, label = ds[0]
    assert ds.num_classes == 21
    assert set(label.unique().tolist()) == {0, 15, 20, 255}


def test_ade20k_shifts_ids_and_ignores_other(tmp_path):
    root = make_ade(tmp_path, _label([0, 1, 150, 13]))
    ds = open_dataset(f"ade20k:{root}", "val")
    _, label = ds[0]
    assert ds.num_classes == 150
    assert set(label.unique().tolist()) == {255, 0, 149, 12}


def test_missing_directory_names_it(tmp_path):
    with pytest.raises(InputError, match="leftImg8bit"):
        open_dataset(f"cityscapes:{tmp_path / 'nothing'}", "train")


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        open_dataset(f"cityscapes:{tmp_path}", "val")


def test_unreadable_image_names_the_file(tmp_path):
    root = make_ade(tmp_path, _label([1]))
    bad = root / "images" / "training" / "ADE_x_00000001.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = open_dataset(f"ade20k:{root}", "train")
    with pytest.raises(InputError, match=r"ADE_x_00000001\.jpg"):
        ds[0]


def test_label_of_another_size_is_an_error(tmp_path):
    root = make_cityscapes(tmp_path, np.full((10, 16), 7))
    with pytest.raises(InputError, match="must match"):
        open_dataset(f"cityscapes:{root}", "train")[0]


@pytest.mark.parametrize(
    ("maker", "spec", "bad_value"),
    [(make_cityscapes, "cityscapes", 40), (make_voc, "voc", 21), (make_ade, "ade20k", 151)],
)
def test_class_id_out_of_range_is_an_error(tmp_path, maker, spec, bad_value):
    root = maker(tmp_path, _label([0, bad_value]) if spec != "cityscapes" else _label([7, bad_value]))
    ds = open_dataset(f"{spec}:{root}", "val")
    with pytest.raises(InputError, match=str(bad_value)):
        ds[0]


def test_missing_label_file_is_an_error(tmp_path):
    root = make_cityscapes(tmp_path, _label([7]))
    next((root / "gtFine" / "train").rglob("*.png")).unlink()
    with pytest.raises(InputError, match="missing"):
        open_dataset(f"cityscapes:{root}", "train")


def test_rgb_colour_label_is_refused(tmp_path):
    root = make_ade(tmp_path, _label([1]))
    _rgb(root / "annotations" / "training" / "ADE_x_00000001.png")
    with pytest.raises(InputError, match="single-channel"):
        open_dataset(f"ade20k:{root}", "train")[0]


def test_collate_pads_mixed_sizes_with_ignore():
    from harden.data import collate_pad

    images, labels = collate_pad(
        [
            (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long)),
            (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.long)),
        ]
    )
    assert images.shape == (2, 3, 6, 5)
    assert labels[0, 5, 0] == 255
    assert labels[1, 0, 4] == 255
    assert images[0, :, 5].sum() == 0
