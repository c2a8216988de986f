"""Hostile inputs and faults, one test per class: each ends in exit 2 (or 130/143 for signals)
with a message naming the file or field, no traceback, and every pre-existing file byte-identical.
(Tampered manifests: tests/test_manifest.py.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_refused as _refused
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from harden.cli import cli
from harden.data.base import read_image, read_label
from harden.errors import InputError


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != ".harden.lock"}


@pytest.fixture
def run(trained_run, tmp_path) -> Path:  # type: ignore[no-untyped-def]
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def test_tampered_run_configuration_is_refused_naming_file_and_field(run) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    config = json.loads((run / "config.json").read_text())
    for field, value, words in (("num_classes", 10**9, ["num_classes"]), ("class_names", [], ["class_names"])):
        changed = {**config, "model": {**config["model"], field: value}}
        (run / "config.json").write_text(json.dumps(changed))
        before = _snapshot(run)
        _refused(runner.invoke(cli, ["eval", str(run), "--images", "1"]), "config.json", *words)
        assert _snapshot(run) == before
    (run / "config.json").write_text(json.dumps({**config, "train": {**config["train"], "image_size": "big"}}))
    _refused(runner.invoke(cli, ["eval", str(run), "--images", "1"]), "config.json")
    (run / "config.json").write_text(json.dumps({**config, "train": {**config["train"], "data": 3}}))
    _refused(runner.invoke(cli, ["eval", str(run), "--images", "1"]), "config.json", "data")
    (run / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(run / "model.safetensors"))  # the weights file's own config: a list, not an object
    save_file(tensors, str(run / "model.safetensors"), metadata={"harden_model_config": "[]"})
    _refused(runner.invoke(cli, ["eval", str(run), "--images", "1"]), "model.safetensors", "JSON object")


@pytest.mark.parametrize("fault", ["int8", "nan"])
def test_weights_of_the_wrong_type_or_not_finite_are_refused(run, fault) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(str(run / "model.safetensors"))
    with open(run / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 4)
    tensors[name] = tensors[name].to(torch.int8) if fault == "int8" else torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(run / "model.safetensors"), metadata=header["__metadata__"])
    _refused(CliRunner().invoke(cli, ["eval", str(run), "--images", "1"]), "model.safetensors", name)


def _png_declaring(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    """A valid 1×1 PNG whose header claims width × height (a decompression bomb's signature)."""
    Image.new(mode, (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_decompression_bombs_and_16_bit_images_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 60000, 60000)
    with pytest.raises(InputError, match=r"bomb\.png: .*exceeds the 50 MP limit"):
        read_image(bomb)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(deep)
    with pytest.raises(InputError, match="16-bit or float"):
        read_image(deep)


@pytest.mark.parametrize("size", [(60000, 60000), (10000, 6000)])  # PIL's own guard; then harden's 50 MP
def test_a_label_decompression_bomb_is_refused_naming_the_file(tmp_path: Path, size: tuple[int, int]) -> None:
    bomb = tmp_path / "frankfurt_000000_000294_gtFine_labelIds.png"
    _png_declaring(bomb, *size, mode="L")
    with pytest.raises(InputError, match=r"labelIds\.png: label .*exceeds the 50 MP limit"):
        read_label(bomb)


def test_absurd_sizes_and_iteration_counts_are_refused_before_any_work(run) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    _refused(runner.invoke(cli, ["eval", str(run), "--image-size", "100000x100000"]), "MP")
    _refused(runner.invoke(cli, ["attack", str(run), "--iters", "1000000000"]), "--iters")
    _refused(runner.invoke(cli, ["eval", str(run), "--image-size", "4x4"]), "at least 16")


def test_unwritable_or_full_outputs_exit_2_naming_the_path_and_keep_old_files(run, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _refused(runner.invoke(cli, ["eval", str(run), "--images", "1", "--out", str(blocker)]), "a-file")
    assert runner.invoke(cli, ["eval", str(run), "--images", "1"]).exit_code == 0
    before = _snapshot(run)

    import harden._io

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "eval.json"))

    monkeypatch.setattr(harden._io.os, "replace", full)
    _refused(runner.invoke(cli, ["eval", str(run), "--images", "1"]), "eval.json", "disk is full")
    assert _snapshot(run) == before  # the old eval.json is intact, no temporary left
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_outputs_never_overwrite_what_harden_did_not_write(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    before = _snapshot(run)
    _refused(runner.invoke(cli, ["eval", str(run), "--json", str(run / "config.json")]), "config.json")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    _refused(runner.invoke(cli, ["eval", str(run), "--json", str(notes)]), "notes.json", "not a harden-eval")
    assert _snapshot(run) == before and notes.read_text() == '{"mine": true}'

    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    args = ["train", "--model", "pspnet_tiny", "--epochs", "1", "--image-size", "32x64", "--out", str(stranger)]
    _refused(runner.invoke(cli, args), "not a harden run", "thesis.tex")
    assert sorted(p.name for p in stranger.iterdir()) == ["thesis.tex"]  # not even a lock file


def test_a_second_writer_on_the_same_run_is_refused_naming_the_holder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from harden.outputs import exclusive

    run = tmp_path / "run"
    args = ["train", "--model", "pspnet_tiny", "--epochs", "1", "--image-size", "32x64", "--train-images", "8",
            "--val-images", "2", "--batch-size", "4", "--no-progress", "--out", str(run)]  # fmt: skip
    with exclusive(run, "training run"):  # another process holding the run (flock: per open file)
        _refused(CliRunner().invoke(cli, args), "in use by another harden training run", f"PID {os.getpid()}")
    assert CliRunner().invoke(cli, args).exit_code == 0  # free again once the holder is gone


def test_staging_of_a_killed_export_is_swept(ram_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f".exp.{dead_pid}.x1y2.staging"
    stale.mkdir()
    (stale / "model.fp32.onnx").write_bytes(b"half")
    live = tmp_path / f".exp.{os.getpid()}.a1b2.staging"  # a running export's: kept
    live.mkdir()
    result = CliRunner().invoke(cli, ["export", str(ram_run), "--out", str(tmp_path / "exp"), "--no-parity"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists()


def _default_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_training_with_their_exit_code_and_leave_a_resumable_run(tmp_path, signum, code) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    args = [sys.executable, "-m", "harden", "train", "--model", "pspnet_tiny", "--epochs", "200", "--image-size",
            "32x64", "--train-images", "8", "--val-images", "2", "--batch-size", "4", "--no-progress",
            "--out", str(run)]  # fmt: skip
    # a shell that starts the suite in the background without job control makes its children
    # ignore SIGINT, and Python then never raises KeyboardInterrupt: give the child the default
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=_default_interrupt)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "state.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == code, output
    assert "Traceback" not in output and "interrupted" in output
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    done = len((run / "metrics.jsonl").read_text().splitlines())
    resumed = CliRunner().invoke(
        cli, ["train", "--out", str(run), "--resume", "--epochs", str(done + 1), "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output  # the last complete checkpoint resumes


@pytest.mark.parametrize(
    "fault", ["progress-a-string", "negative-epoch", "no-optimizer-groups", "bad-rng", "garbage-metrics"]
)
def test_a_tampered_resume_state_is_refused_and_nothing_is_rewritten(run, fault) -> None:  # type: ignore[no-untyped-def]
    state = run / "state.safetensors"
    tensors = load_file(str(state))
    with open(state, "rb") as f:
        metadata = dict(json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"])
    if fault == "progress-a-string":
        metadata["progress"] = '"three"'
    elif fault == "negative-epoch":
        metadata["progress"] = json.dumps({"epoch": -4, "step": 0})
    elif fault == "no-optimizer-groups":
        metadata["optimizer_groups"] = "[]"
    elif fault == "bad-rng":
        tensors["rng.torch"] = torch.zeros(3, dtype=torch.uint8)
    if fault == "garbage-metrics":
        (run / "metrics.jsonl").write_bytes(b"\xff\xfe[1, 2]\n\x00\x00 not json\n")
    else:
        save_file(tensors, str(state), metadata=metadata)
    before = _snapshot(run)
    done = 8  # conftest's trained_run: 8 epochs
    result = CliRunner().invoke(
        cli, ["train", "--out", str(run), "--resume", "--epochs", str(done + 1), "--no-progress"]
    )
    if fault == "garbage-metrics":  # not trusted, not fatal: the run resumes and logs its new epoch
        assert result.exit_code == 0, result.output
        return
    _refused(result, "state.safetensors", "--overwrite")
    assert _snapshot(run) == before


def test_images_below_a_models_minimum_are_refused_before_the_forward_pass() -> None:
    from harden.models import create_model

    model = create_model("segformer_tiny", 19).eval()
    with pytest.raises(InputError, match="16×16 pixels are smaller than SegFormer's minimum side of 32"):
        model(torch.rand(1, 3, 16, 16))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 19, 32, 32)
