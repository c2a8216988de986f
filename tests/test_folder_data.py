"""`--data folder:IMAGES,MASKS[,CLASSES]`: images and masks paired by stem, validated like the
other loaders (missing mask, size mismatch, id out of range → exit 2 naming the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harden.data import open_dataset
from harden.errors import InputError


def _write(root: Path, stems: list[str], classes: int = 5, size: tuple[int, int] = (16, 24)) -> tuple[Path, Path]:
    images, masks = root / "img", root / "ann"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{stem}.jpg")
        mask = rng.integers(0, classes, size, dtype=np.uint8)
        mask[0, 0] = 255  # ignored
        palette = Image.fromarray(mask, mode="P")  # palette masks hold the ids as indices
        palette.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        palette.save(masks / f"{stem}.png")
    return images, masks


def test_pairs_by_stem_with_class_count_or_names_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    images, masks = _write(tmp_path, ["b", "a", "c"])
    (masks / "unrelated.png").write_bytes(b"")  # a mask without an image is not used
    dataset = open_dataset(f"folder:{images},{masks},5", "val")
    assert len(dataset) == 3 and dataset.num_classes == 5
    assert [p[0].stem for p in dataset.pairs] == ["a", "b", "c"]  # type: ignore[attr-defined]
    image, label = dataset[0]
    assert image.shape == (3, 16, 24) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert int(label[0, 0]) == 255 and int(label.max()) <= 255 and int(label[label != 255].max()) < 5
    names = tmp_path / "names.txt"
    names.write_text("road\ncar\nperson\ntree\nsky\n")
    assert open_dataset(f"folder:{images},{masks},{names}", "val").class_names[1] == "car"
    assert open_dataset(f"folder:{images},{masks}", "val", classes=7, num_images=2).num_classes == 7


def test_bad_folders_are_refused_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    images, masks = _write(tmp_path, ["a", "b"], classes=5)
    (masks / "b.png").unlink()
    with pytest.raises(InputError, match=r"b\.jpg: no mask b\.png"):
        open_dataset(f"folder:{images},{masks},5", "val")
    images, masks = _write(tmp_path / "2", ["a"], classes=9)
    with pytest.raises(InputError, match=r"a\.png: label values \[5"):
        open_dataset(f"folder:{images},{masks},5", "val")[0]
    images, masks = _write(tmp_path / "3", ["a"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "a.png")
    with pytest.raises(InputError, match="must match"):
        open_dataset(f"folder:{images},{masks},5", "val")[0]
    with pytest.raises(InputError, match="how many classes"):
        open_dataset(f"folder:{images},{masks}", "val")
    with pytest.raises(InputError, match="1–255"):
        open_dataset(f"folder:{images},{masks},0", "val")
    with pytest.raises(InputError, match="expected --data folder"):
        open_dataset(f"folder:{images}", "val")


def test_verify_a_bare_file_on_an_image_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The model's class count is the folder's when the spec does not give one."""
    import torch
    from click.testing import CliRunner

    from harden.cli import cli

    images, masks = _write(tmp_path, ["a", "b"], classes=4, size=(32, 64))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 32, 64),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)  # fmt: skip
    args = ["verify", str(path), "--data", f"folder:{images},{masks}", "--images", "2", "--attack", "pgd", "--iters",
            "2", "--queries", "5", "--eps", "4/255", "--out", str(tmp_path / "r"), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1, 3), result.output  # a verdict of any kind: the test is about the data
    assert "verifying" in result.output and (tmp_path / "r" / "verify.json").is_file()
