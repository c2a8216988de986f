import json

import pytest
import torch

from harden._io import atomic_open, atomic_path, write_json
from harden.config import ModelConfig
from harden.errors import InputError
from harden.models import create_model
from harden.run import load_model, save_model
from harden.training.checkpoint import Progress, load_state, save_state


def _config():
    return ModelConfig("segformer_tiny", 3, ["a", "b", "c"])


def test_model_file_alone_rebuilds_the_model(tmp_path):
    model = create_model("segformer_tiny", 3).eval()
    save_model(tmp_path / "model.safetensors", model, _config())
    loaded, config = load_model(tmp_path / "model.safetensors")
    assert config == _config()
    assert not loaded.training
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_state_round_trip_restores_optimizer_and_rng(tmp_path):
    model = create_model("pspnet_tiny", 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 32, 32)).mean().backward()
    opt.step()
    torch.manual_seed(123)
    save_state(tmp_path / "state.safetensors", model, opt, Progress(epoch=3, step=17), extra={"k": 1})
    expected_next = torch.rand(4)

    model2 = create_model("pspnet_tiny", 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    torch.manual_seed(999)
    progress, extra = load_state(tmp_path / "state.safetensors", model2, opt2)
    assert progress == Progress(3, 17)
    assert extra == {"k": 1}
    assert torch.equal(torch.rand(4), expected_next)
    assert opt2.param_groups[0]["lr"] == 1e-3
    state, state2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert state.keys() == state2.keys()
    for index in state:
        torch.testing.assert_close(state[index]["exp_avg"], state2[index]["exp_avg"])
        torch.testing.assert_close(state[index]["step"], state2[index]["step"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_and_foreign_files_are_input_errors(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="not a readable"):
        load_model(bad)
    with pytest.raises(InputError, match="no weights"):
        load_model(tmp_path / "missing")
    # weights of one model under another model's config
    save_model(bad, create_model("pspnet_tiny", 3), _config())
    with pytest.raises(InputError, match="do not fit"):
        load_model(bad)


def test_pickles_are_never_loaded(tmp_path):
    evil = tmp_path / "model.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle-based file under the expected name
    with pytest.raises(InputError):
        load_model(evil)


def test_atomic_writes_leave_the_old_file_when_the_writer_crashes(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(path) as f:  # noqa: PT012 (the crash is inside the write)
        f.write('{"v": 2, "half')
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert list(tmp_path.iterdir()) == [path], "no temporary file may be left behind"
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new.bin") as tmp:  # noqa: PT012
        tmp.write_bytes(b"partial")
        raise RuntimeError
    assert not (tmp_path / "new.bin").exists()
