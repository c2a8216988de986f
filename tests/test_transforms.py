import torch

from harden.data import Augmented, SyntheticStreets, TrainAugment
from harden.data.transforms import random_crop, rescale


def test_augment_outputs_crop_size_and_only_existing_label_values():
    image = torch.rand(3, 40, 60)
    label = torch.randint(0, 5, (40, 60))
    aug = TrainAugment(crop=(32, 48), scale=(0.5, 2.0))
    for seed in range(10):
        out_img, out_lab = aug(image, label, torch.Generator().manual_seed(seed))
        assert out_img.shape == (3, 32, 48)
        assert out_lab.shape == (32, 48)
        assert set(out_lab.unique().tolist()) <= {0, 1, 2, 3, 4, 255}  # nearest: no blended ids
        assert out_img.min() >= 0 and out_img.max() <= 1


def test_crop_larger_than_image_pads_label_with_ignore():
    _, lab = random_crop(
        torch.rand(3, 10, 10), torch.zeros(10, 10, dtype=torch.long), (16, 16), torch.Generator().manual_seed(0)
    )
    assert lab.shape == (16, 16)
    assert (lab == 255).sum() == 16 * 16 - 100


def test_rescale_keeps_pairs_aligned():
    label = torch.zeros(20, 20, dtype=torch.long)
    label[:, 10:] = 1
    image = label[None].float().expand(3, -1, -1).clone()
    img2, lab2 = rescale(image, label, 2.0)
    assert lab2.shape == (40, 40)
    agree = ((img2[0] > 0.5).long() == lab2).float().mean()
    assert agree > 0.97


def test_augmented_dataset_is_reproducible_per_epoch_and_varies_across_epochs():
    base = SyntheticStreets("train", size=(64, 128), num_images=2)
    aug = Augmented(base, TrainAugment(crop=(64, 128), scale=(0.5, 1.5)), seed=3)
    aug.set_epoch(0)
    a = aug[1]
    b = aug[1]
    aug.set_epoch(1)
    c = aug[1]
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])
