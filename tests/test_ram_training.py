"""Training with RAM: settings stored with the weights, restored on load, fine-tuning, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from harden.cli import cli
from harden.ram import RAMConfig, robust_cores
from harden.training import load_model

SMALL = ["--image-size", "64x128", "--train-images", "8", "--val-images", "4", "--batch-size", "4", "--no-progress"]


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_train_with_ram_stores_settings_and_load_restores_them(tmp_path: Path) -> None:
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert run("train", "--model", "segformer_tiny", "--epochs", "1", "--out", base, *SMALL).exit_code == 0
    result = run(
        "train", "--model", "segformer_tiny", "--epochs", "1", "--out", tuned, *SMALL,
        "--ram", "--mas-threshold", "0.4", "--rad-p", "0.25", "--attn-learnable", "--init-from", base,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "with RAM MAS(T=0.4) + RAD(p=0.25) + learnable logit gain" in result.output
    saved = json.loads((tuned / "config.json").read_text())["model"]["ram"]
    assert RAMConfig.from_dict(saved) == RAMConfig(threshold=0.4, drop_p=0.25, learnable=True)
    model, _ = load_model(tuned)
    cores = robust_cores(model)
    assert len(cores) == 4 and all(core.config == RAMConfig.from_dict(saved) for _, core in cores)
    trained = load_file(str(tuned / "model.safetensors"))
    gains = {k: v for k, v in trained.items() if k.endswith("logit_gain")}
    assert len(gains) == 4 and any(float(v) != 1.0 for v in gains.values())  # trained, and restored:
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in gains.items())


def test_init_from_starts_from_the_given_weights(tmp_path: Path) -> None:
    from harden.run import build_model
    from harden.training.checkpoint import init_weights

    base = tmp_path / "base"
    assert run("train", "--model", "segmenter_tiny", "--epochs", "1", "--out", base, *SMALL).exit_code == 0
    source, config = load_model(base)
    config.ram = RAMConfig(learnable=True).to_dict()
    model = build_model(config)
    init_weights(model, base)
    state = model.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "pspnet_tiny", "--ram"], "no attention layer RAM can convert"),
        (["--mas-threshold", "0.3"], "add --ram"),
        (["--mas", "--rad"], "add --ram"),  # used to be ignored silently: a plain model trained
        (["--ram", "--rad-p", "1.0"], "drop probability must lie in [0, 1)"),
        (["--ram", "--mas-threshold", "1.2"], "MAS threshold must lie in (0, 1)"),
        (["--attn-temperature", "0"], "temperature must be > 0"),
        (["--init-from", "{tmp}"], "no weights at"),
    ],
)
def test_bad_ram_options_exit_2_and_create_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run("train", "--epochs", "1", "--out", out, *SMALL, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (out / "model.safetensors").exists()


def test_mas_threshold_too_low_for_the_keys_is_refused_with_a_hint(tmp_path: Path) -> None:
    # segformer_tiny's first stage sees 2×4 = 8 keys at 64×128: T must exceed 1/8
    result = run("train", "--epochs", "1", "--out", tmp_path / "r", *SMALL, "--ram", "--mas-threshold", "0.1")
    assert result.exit_code == 2, result.output
    assert "MAS threshold must lie in (1/8" in result.output and "Raise --mas-threshold" in result.output
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_attention_map_draws_baseline_and_ram(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run("train", "--model", "segformer_tiny", "--epochs", "1", "--out", run_dir, *SMALL).exit_code == 0
    out = tmp_path / "map.png"
    result = run("attention-map", run_dir, "--query", "10,100", "--out", out)
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size[0] > 800
    assert run("attention-map", run_dir, "--query", "64,0").exit_code == 2  # outside a 64×128 image
    assert run("attention-map", run_dir, "--layer", "no-such-layer").exit_code == 2


def test_query_attention_rows_are_distributions_and_mas_bounds_them() -> None:
    from harden.models import create_model
    from harden.ram.attention_maps import query_attention, ram_comparison

    torch.manual_seed(0)
    model = create_model("segmenter_tiny_mask", num_classes=5).eval()
    baseline, ram = ram_comparison(model, RAMConfig(threshold=0.3, drop_p=0.5))
    assert not robust_cores(baseline) and robust_cores(ram)
    image = torch.rand(3, 64, 128)
    base_maps, skipped = query_attention(baseline, image, (5, 120))
    ram_maps, _ = query_attention(ram, image, (5, 120))
    assert base_maps and not skipped
    assert base_maps[0].query_cell == (0, 15)  # 8×16 patch grid at stride 8
    for layer in ram_maps:
        assert layer.attention.max() <= 0.3 + 1e-6
        assert not np.array_equal(layer.attention, layer.applied)
    encoder = [m for m in base_maps if "decoder" not in m.name]
    for layer in encoder:
        assert abs(layer.attention.sum() - 1.0) < 1e-4


def test_windowed_layers_are_named_not_drawn() -> None:
    from harden.models import create_model
    from harden.ram.attention_maps import query_attention

    model = create_model("swin_tiny", num_classes=5).eval()
    maps, skipped = query_attention(model, torch.rand(3, 64, 128), (0, 0))
    assert skipped and all(m.name not in skipped for m in maps)


def test_eval_of_a_rad_model_is_reproducible_per_rad_seed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--model", "segmenter_tiny", "--epochs", "1", "--out", run_dir, *SMALL, "--ram"]
    assert run(*args).exit_code == 0
    results = []
    for seed in (3, 3, 4):
        result = run("eval", run_dir, "--no-progress", "--examples", "0", "--rad-seed", seed)
        assert result.exit_code == 0, result.output
        assert f"draw of --rad-seed {seed}" in result.output
        results.append(json.loads((run_dir / "eval.json").read_text()))
    assert results[0] == results[1] and results[0]["rad_seed"] == 3
    assert results[0]["per_class_iou"] != results[2]["per_class_iou"]
