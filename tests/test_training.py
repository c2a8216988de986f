import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from harden.errors import InputError
from harden.run import MODEL_FILE, STATE_FILE
from harden.training import TrainConfig, prepare_run, train

TINY = dict(image_size=(64, 128), train_images=16, val_images=4, batch_size=4)


def _train(run_dir, epochs, model="pspnet_tiny", resume=False, overwrite=False, **overrides):
    config = TrainConfig(epochs=epochs, **{**TINY, **overrides})
    model_config, config = prepare_run(
        run_dir, model, config, {}, resume=resume, overwrite=overwrite, resume_epochs=epochs if resume else None
    )
    return train(run_dir, model_config, config, resume=resume, progress=False, log=lambda _: None)


def _weights(run_dir):
    return load_file(str(run_dir / MODEL_FILE))


def test_training_lowers_the_loss_and_writes_the_run(tmp_path):
    result = _train(tmp_path / "run", epochs=3, model="segformer_tiny", lr=3e-3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert 0 < result.val_miou <= 1
    for name in ("config.json", "model.safetensors", "state.safetensors", "curves.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_same_seed_same_weights_different_seed_different_weights(tmp_path):
    _train(tmp_path / "a", epochs=1, seed=5)
    _train(tmp_path / "b", epochs=1, seed=5)
    _train(tmp_path / "c", epochs=1, seed=6)
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _interrupt_after_first_checkpoint(monkeypatch):
    import harden.training.loop as loop

    real_commit = loop.commit_epoch  # the first checkpoint: the end of epoch 1

    def commit_then_die(*args, **kwargs):
        real_commit(*args, **kwargs)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(loop, "commit_epoch", commit_then_die)
    return lambda: monkeypatch.setattr(loop, "commit_epoch", real_commit)


def test_resume_ends_exactly_where_the_uninterrupted_run_ends(tmp_path, monkeypatch):
    _train(tmp_path / "straight", epochs=2)
    restore = _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", epochs=2)
    restore()
    _train(tmp_path / "resumed", epochs=2, resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    _train(tmp_path / "run", epochs=1)
    with pytest.raises(InputError, match="--resume"):
        _train(tmp_path / "run", epochs=1)
    with pytest.raises(InputError, match="no state"):
        _train(tmp_path / "empty", epochs=1, resume=True)
    _train(tmp_path / "run", epochs=1, overwrite=True)


def test_crash_between_metrics_and_checkpoint_is_repaired_on_resume(tmp_path, monkeypatch):
    import harden.training.loop as loop

    _train(tmp_path / "run", epochs=1)
    real_commit = loop.commit_epoch

    def crash_on_second(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "commit_epoch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", epochs=2, resume=True)
    monkeypatch.setattr(loop, "commit_epoch", real_commit)
    # metrics.jsonl now holds epoch 2 but the state still says 1: resume must re-run epoch 2 once
    _train(tmp_path / "run", epochs=2, resume=True)
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_sigkill_at_any_moment_resumes_from_last_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "harden",
        "train",
        "--model",
        "pspnet_tiny",
        "--out",
        str(run),
        "--image-size",
        "64x128",
        "--train-images",
        "16",
        "--val-images",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    proc = subprocess.Popen([*cmd, "--epochs", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / STATE_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get somewhere into the next epoch, or into a write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / STATE_FILE).exists()
    done = subprocess.run([*cmd, "--epochs", "4", "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1] == 4
    assert epochs == sorted(set(epochs)), "no epoch may be logged twice"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "no temporary file may survive"


def test_nan_loss_stops_with_a_hint(tmp_path):
    from harden.training import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        _train(tmp_path / "run", epochs=1, lr=1e30, grad_clip=0.0, optimizer="sgd")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"batch_size": 0}, "batch size"), ({"lr": -1.0}, "learning rate"), ({"lr": float("nan")}, "learning rate"),
     ({"scale_range": (2.0, 1.0)}, "scale range"), ({"optimizer": "adam"}, "optimizer")],
)  # fmt: skip
def test_invalid_training_parameters_are_refused(overrides, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**overrides)


def test_batch_larger_than_dataset_is_refused(tmp_path):
    with pytest.raises(InputError, match="lower --batch-size"):
        _train(tmp_path / "run", epochs=1, batch_size=32)
