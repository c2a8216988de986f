"""Effective receptive field (RAM paper §3.1): the gradient of the centre pixel's logits."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from harden.cli import cli
from harden.data import open_dataset
from harden.erf import ReceptiveField, effective_receptive_field


def test_a_3x3_convolution_sees_exactly_its_3x3_window():
    model = nn.Conv2d(3, 5, kernel_size=3, padding=1)
    dataset = open_dataset("synthetic", "val", size=(32, 48), num_images=3, seed=0)
    field = effective_receptive_field(model, dataset, images=3)
    nonzero = np.argwhere(field.gradient > 0)
    assert nonzero.min(0).tolist() == [15, 23] and nonzero.max(0).tolist() == [17, 25]  # centre (16, 24) ± 1
    # the gradient of Σ_c logit_c w.r.t. pixel (y, x, rgb) is Σ_c w[c, rgb, ·]: the same for every image
    expected = model.weight.detach().sum(0).abs().sum(0).numpy()  # cross-correlation: no flip
    np.testing.assert_allclose(field.gradient[15:18, 23:26], expected, rtol=1e-5)
    assert field.radius(0.9) <= np.sqrt(2) + 1e-6 and field.images == 3


def test_radius_of_a_uniform_field_grows_with_the_share():
    field = ReceptiveField(np.ones((21, 21)), 1)
    assert field.radius(0.1) < field.radius(0.5) < field.radius(0.99) <= 10 * np.sqrt(2)
    assert np.isnan(ReceptiveField(np.zeros((5, 5)), 1).radius(0.5))


def test_erf_command_writes_the_map_and_radii(ram_run, tmp_path):
    out = tmp_path / "erf.png"
    result = CliRunner().invoke(cli, ["erf", str(ram_run), "--images", "2", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert 0 < numbers["radius_50"] <= numbers["radius_90"]
    assert out.stat().st_size > 5_000


def test_global_attention_reaches_further_than_a_small_cnn():
    from harden.models import create_model

    torch.manual_seed(0)
    dataset = open_dataset("synthetic", "val", size=(64, 64), num_images=2, seed=0)
    attention = effective_receptive_field(create_model("segformer_tiny", num_classes=19), dataset, images=2)
    conv = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(4)], nn.Conv2d(8, 19, 1))
    local = effective_receptive_field(conv, dataset, images=2)
    assert local.radius(0.9) <= 4 * np.sqrt(2) + 1e-6  # four 3×3 layers: at most 4 pixels away
    assert attention.radius(0.9) > local.radius(0.9)
    assert (attention.gradient > 0).mean() > 0.9  # global attention: every pixel reaches the centre


def test_no_images_is_bad_input():
    from harden.errors import InputError

    dataset = open_dataset("synthetic", "val", size=(32, 32), num_images=1, seed=0)
    with pytest.raises(InputError):
        effective_receptive_field(nn.Conv2d(3, 2, 1), torch.utils.data.Subset(dataset, []), images=1)
