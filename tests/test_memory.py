"""Know the cost before spending it (harden.memory), and the faults that used to end in a
traceback: a static ONNX input against --image-size, a full disk while a training epoch commits,
weights left behind their resume state. (A label decompression bomb: tests/test_faults.py.)"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import assert_refused as _refused
from cli_helpers import run_cli as _run
from PIL import Image

from harden.errors import InputError
from harden.memory import (
    LIMIT_VARIABLE,
    OVERHEAD,
    MemoryModel,
    fit_memory,
    parse_bytes,
    peak_tensor_bytes,
    require_fits,
)

# ---------------------------------------------------------------- the estimate itself


def test_peak_counts_what_is_alive_at_once_not_what_was_ever_allocated() -> None:
    def step() -> None:
        a = torch.empty(1000, dtype=torch.float32)  # 4,000 bytes
        del a
        b = torch.empty(500, dtype=torch.float32)  # 2,000 bytes
        c = b.view(10, 50)  # a view: no new storage
        d = torch.empty(250, dtype=torch.float64)  # 2,000 bytes, alive with b
        del b, c, d

    assert peak_tensor_bytes(step) == 4000


def test_fit_recovers_a_step_that_grows_with_pixels_and_their_square() -> None:
    def step(batch: int, height: int, width: int) -> None:
        pixels = height * width
        linear = torch.empty(batch * pixels * 12, dtype=torch.uint8)  # 12 B a pixel
        square = torch.empty(batch * pixels * pixels // 1000, dtype=torch.uint8)  # N²/1000
        del linear, square

    fitted = fit_memory(step, 1024, 2048)
    truth = 4 * (1024 * 2048 * 12 + (1024 * 2048) ** 2 // 1000)
    assert abs(fitted.bytes(4, 1024, 2048) - truth) / truth < 0.01


def test_refusal_names_estimate_limit_and_a_batch_and_size_that_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MemoryModel(fixed=0, linear=100.0, quadratic=0.0)  # 100 B a pixel
    monkeypatch.setenv(LIMIT_VARIABLE, "100M")
    with pytest.raises(InputError) as refused:
        require_fits(model, 8, 512, 1024, "attacking the model")
    message = str(refused.value)
    assert f"needs about {400 * OVERHEAD:.1f} MB" in message and "100.0 MB is free" in message
    assert LIMIT_VARIABLE in message
    batch = int(re.search(r"--batch-size (\d+)", message).group(1))  # type: ignore[union-attr]
    height, width = map(int, re.search(r"--image-size (\d+)x(\d+)", message).groups())  # type: ignore[union-attr]
    assert require_fits(model, batch, 512, 1024, "attacking the model") <= parse_bytes("100M", "x")
    assert require_fits(model, 8, height, width, "attacking the model") <= parse_bytes("100M", "x")
    assert width == 2 * height  # the aspect ratio kept


@pytest.mark.parametrize("text", ["lots", "-3G", "8 parsecs"])
def test_a_memory_limit_that_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(InputError, match=LIMIT_VARIABLE):
        parse_bytes(text, LIMIT_VARIABLE)


# ---------------------------------------------------------------- the commands refuse before any work


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "seg"
    args = ["train", "--model", "segformer_tiny", "--epochs", "1", "--image-size", "64x128", "--train-images", "4"]
    result = _run(*args, "--val-images", "2", "--batch-size", "4", "--no-progress", "--out", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


def test_attention_map_of_a_huge_image_is_refused_with_a_size_that_fits(
    attention_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000), (90, 120, 60)).save(big)  # N×N attention: tens of GB
    monkeypatch.setenv(LIMIT_VARIABLE, "512M")
    out = tmp_path / "map.png"
    result = _run("attention-map", attention_run, "--image", big, "--out", out)
    _refused(result, "3000×3000", "512.0 MB is free", "downscaled to at most")
    assert not out.exists()
    width, height = map(int, re.search(r"at most (\d+)×(\d+)", result.output).groups())  # type: ignore[union-attr]
    assert 64 <= width == height < 3000
    fitting = tmp_path / "fits.png"
    Image.new("RGB", (width, height), (90, 120, 60)).save(fitting)
    assert _run("attention-map", attention_run, "--image", fitting, "--out", out).exit_code == 0  # it does fit


def test_eval_and_attack_refuse_a_batch_that_cannot_fit_and_the_suggestion_runs(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LIMIT_VARIABLE, "64M")
    big = ["--image-size", "256x512", "--batch-size", "16", "--images", "2"]
    eval_out = tmp_path / "eval"
    _refused(_run("eval", trained_run, *big, "--out", eval_out), "evaluating the model", "64.0 MB is free")
    assert not eval_out.exists()
    monkeypatch.setenv(LIMIT_VARIABLE, "400M")
    attack = _run("attack", trained_run, *big, "--attack", "fgsm", "--out", tmp_path / "attack")
    _refused(attack, "attacking the model", "400.0 MB is free", "--batch-size")
    batch = re.search(r"--batch-size (\d+)", attack.output).group(1)  # type: ignore[union-attr]
    fitting = ["--image-size", "256x512", "--batch-size", batch, "--images", "2", "--attack", "fgsm"]
    result = _run("attack", trained_run, *fitting, "--eps", "4/255", "--out", tmp_path / "attack")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- library exceptions in harden's words


def test_a_static_onnx_input_against_another_image_size_is_refused_up_front(fp32_export: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fp32_export / "model.fp32.onnx"))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], (64, 64), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    static = tmp_path / "static.onnx"
    onnx.save(model, str(static))
    result = _run("verify", static, "--twin", "graph", "--data", "synthetic", "--image-size", "32x64", "--images", "2",
                  "--out", tmp_path / "report")  # fmt: skip
    _refused(result, "static.onnx takes only 64x64 images", "--image-size 64x64")
    assert not (tmp_path / "report").exists()

    from harden.runtime.engines import OnnxRuntimeEngine

    with OnnxRuntimeEngine(static) as engine, pytest.raises(InputError, match=r"static\.onnx: ONNX Runtime refused"):
        engine.logits(torch.rand(1, 3, 32, 64), seed=0)


# ---------------------------------------------------------------- a run's files stay one consistent set


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def test_a_full_disk_while_an_epoch_commits_keeps_the_previous_pair(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {name: (run / name).read_bytes() for name in ("model.safetensors", "state.safetensors")}
    real_fsync = os.fsync

    def full_on_state(fd: int) -> None:
        if "state.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_state)
    result = _run("train", "--out", run, "--resume", "--epochs", "9", "--no-progress")
    _refused(result, "disk is full")
    assert {name: (run / name).read_bytes() for name in before} == before  # weights and state of epoch 8, together
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _run("train", "--out", run, "--resume", "--epochs", "9", "--no-progress").exit_code == 0


def test_weights_left_behind_their_state_are_republished_on_resume(run: Path) -> None:
    from safetensors.torch import load_file

    from harden.run import saved_epoch

    old_weights = (run / "model.safetensors").read_bytes()
    assert _run("train", "--out", run, "--resume", "--epochs", "9", "--no-progress").exit_code == 0
    (run / "model.safetensors").write_bytes(old_weights)  # killed between the state's rename and the weights'
    assert saved_epoch(run / "model.safetensors") == 8
    result = _run("train", "--out", run, "--resume", "--epochs", "9", "--no-progress")
    assert result.exit_code == 0 and "rewritten" in result.output, result.output
    assert saved_epoch(run / "model.safetensors") == 9
    state = load_file(str(run / "state.safetensors"))
    weights = load_file(str(run / "model.safetensors"))
    assert all(np.array_equal(weights[k].numpy(), state[f"model.{k}"].numpy()) for k in weights)
