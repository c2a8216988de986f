"""Adversarial training (`harden train --adv`): the methods, DDC-AT's branches, PIR-AT's backbone,
mid-epoch resume, and two processes against one."""

import json
import os
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from harden.attacks.base import is_randomised
from harden.cli import cli
from harden.data import open_dataset
from harden.errors import InputError
from harden.models import create_model
from harden.ram import RAMConfig
from harden.run import MODEL_FILE, STATE_FILE
from harden.training import TrainConfig, load_model, prepare_run, train
from harden.training.checkpoint import init_backbone
from harden.training.methods import DDCATNet, MixedAdversarial, adversarial_positions, training_attack

K = 19  # classes of the synthetic street scenes
TINY = dict(image_size=(32, 64), train_images=8, val_images=4, batch_size=4, adv_steps=2)


def _train(run_dir, epochs=1, model="segformer_tiny", resume=False, ram=None, **overrides):
    config = TrainConfig(epochs=epochs, **{**TINY, **overrides})
    model_config, config = prepare_run(run_dir, model, config, {}, ram=ram, resume=resume, overwrite=False)
    return train(run_dir, model_config, config, resume=resume, progress=False, log=lambda _: None)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["sat", "pgd", "segpgd", "rppgd", "ddcat"])
def test_each_method_trains_and_logs_its_attack(tmp_path, method):
    result = _train(tmp_path / method, adv=method)
    row = _rows(tmp_path / method)[-1]
    assert result.epochs_done == 1 and torch.isfinite(torch.tensor(row["train_loss"]))
    assert 0 <= row["train_adv_pixel_accuracy"] <= 1
    config = json.loads((tmp_path / method / "config.json").read_text())["train"]
    assert (config["adv"], config["adv_eps"], config["adv_steps"]) == (method, 0.03, 2)


@pytest.mark.parametrize("method", ["pgd", "ddcat"])
def test_adversarial_training_with_ram_attacks_the_randomised_model_without_eot(tmp_path, method):
    result = _train(tmp_path / method, adv=method, ram=RAMConfig().to_dict(), image_size=(64, 64))
    assert result.epochs_done == 1
    model, config = load_model(tmp_path / method)
    assert config.ram is not None and is_randomised(model)  # RAD is in the saved model
    assert 0 <= _rows(tmp_path / method)[-1]["train_adv_pixel_accuracy"] <= 1


@pytest.mark.parametrize("method", ["sat", "pgd", "segpgd", "rppgd"])
def test_training_attacks_raise_the_loss_inside_the_ball(method):
    model = create_model("segformer_tiny", K).eval()
    images, labels = next(iter(torch.utils.data.DataLoader(open_dataset("synthetic", "val", size=(32, 64)), 4)))
    config = TrainConfig(**TINY, adv=method)
    crafted = training_attack(method, config)(model, images, labels).images
    assert (crafted - images).abs().max() <= config.adv_eps + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(model(crafted), labels) > F.cross_entropy(model(images), labels) + 1e-3


def test_adversarial_images_are_the_end_of_the_global_batch():
    assert adversarial_positions(8, 0.5, range(8)).tolist() == [False] * 4 + [True] * 4
    assert adversarial_positions(8, 0.5, range(4, 8)).all()  # process 1 of 2 holds the attacked half
    assert not adversarial_positions(8, 0.5, range(0, 4)).any()
    assert adversarial_positions(4, 1.0, range(4)).all()


def test_ddcat_combined_output_follows_the_mask_branch():
    net = DDCATNet(create_model("segmenter_tiny", 5), feature_channels=64).eval()
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        main, auxiliary, _ = net(x)
        net.mask[-1].bias.copy_(torch.tensor([-50.0, 50.0]))  # every pixel → auxiliary branch
        assert torch.equal(net.combined_labels(x), auxiliary.argmax(1))
        net.mask[-1].bias.copy_(torch.tensor([50.0, -50.0]))  # every pixel → main branch
        assert torch.equal(net.combined_labels(x), main.argmax(1))


def test_ddcat_gives_adversarial_pixels_mask_label_zero(tmp_path):
    _train(tmp_path / "all-adv", adv="ddcat", adv_ratio=1.0)
    assert _rows(tmp_path / "all-adv")[-1]["train_boundary_fraction"] == 0.0  # M_adv = 0 (Alg. 2 line 7)
    _train(tmp_path / "half", adv="ddcat", adv_ratio=0.5)
    assert _rows(tmp_path / "half")[-1]["train_boundary_fraction"] > 0.0  # clean pixels that flip get M = 1


def test_ddcat_export_has_only_the_main_branch(tmp_path):
    run = tmp_path / "ddcat"
    _train(run, adv="ddcat", model="segmenter_tiny")
    saved = load_file(str(run / MODEL_FILE))
    assert set(saved) == set(create_model("segmenter_tiny", K).state_dict())
    state = load_file(str(run / STATE_FILE))
    assert any(k.startswith("model.auxiliary.") for k in state) and any(k.startswith("model.mask.") for k in state)

    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "exp"), "--parity-images", "2"])
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(tmp_path / "exp" / "model.fp32.onnx"))
    onnx.checker.check_model(graph)
    assert len(graph.graph.output) == 1
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: torch.rand(1, 3, 32, 64).numpy()})
    assert logits.shape == (1, K, 32, 64)


def test_ddcat_resumes_with_its_branches(tmp_path, monkeypatch):
    import harden.training.loop as loop

    _train(tmp_path / "straight", epochs=2, adv="ddcat")
    real_commit = loop.commit_epoch

    def commit_then_die(*args, **kwargs):
        real_commit(*args, **kwargs)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(loop, "commit_epoch", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", epochs=2, adv="ddcat")
    monkeypatch.setattr(loop, "commit_epoch", real_commit)
    _train(tmp_path / "resumed", epochs=2, adv="ddcat", resume=True)
    a, b = load_file(str(tmp_path / "straight" / STATE_FILE)), load_file(str(tmp_path / "resumed" / STATE_FILE))
    assert any(k.startswith("model.auxiliary.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # branches, optimiser moments and RNG included


def _classifier_checkpoint(model_name):
    """A 'robust classifier' as a classification library saves it: backbone tensors named
    relative to the backbone, plus the classifier's own head."""
    donor = create_model(model_name, K)
    for p in donor.parameters():
        torch.nn.init.normal_(p)
    tensors = {k.removeprefix("backbone."): v for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    tensors["fc.weight"] = torch.randn(1000, 64)
    return donor, tensors


def test_init_backbone_loads_a_classifier_into_the_backbone_only(tmp_path):
    donor, tensors = _classifier_checkpoint("pspnet_tiny")
    save_file(tensors, str(tmp_path / "robust.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}}, tmp_path / "robust.pt")
    for path in (tmp_path / "robust.safetensors", tmp_path / "robust.pt"):
        model = create_model("pspnet_tiny", K)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert init_backbone(model, path) == len(tensors) - 1  # fc.weight matches nothing
        for name, value in model.state_dict().items():
            if name.startswith("backbone."):
                assert torch.equal(value, donor.state_dict()[name])
            else:
                assert torch.equal(value, before[name])  # the decoder keeps its initialisation


def test_init_backbone_refuses_files_that_do_not_fit(tmp_path):
    _, tensors = _classifier_checkpoint("pspnet_tiny")
    partial = dict(list(tensors.items())[:3])
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(InputError, match="backbone tensors"):
        init_backbone(create_model("pspnet_tiny", K), tmp_path / "partial.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(InputError, match="not a readable"):
        init_backbone(create_model("pspnet_tiny", K), tmp_path / "corrupt.safetensors")
    torch.save({"state_dict": {"x": object()}}, tmp_path / "pickle.pt")  # weights_only refuses arbitrary objects
    with pytest.raises(InputError, match="not a readable"):
        init_backbone(create_model("pspnet_tiny", K), tmp_path / "pickle.pt")


def test_pir_cli_trains_from_the_robust_backbone(tmp_path):
    donor, tensors = _classifier_checkpoint("pspnet_tiny")
    save_file(tensors, str(tmp_path / "robust.safetensors"))
    base = ["train", "--model", "pspnet_tiny", "--image-size", "32x64", "--train-images", "8", "--val-images", "4"]
    base += ["--batch-size", "4", "--epochs", "1", "--adv-steps", "1", "--no-progress"]
    result = CliRunner().invoke(cli, [*base, "--adv", "pir", "--out", str(tmp_path / "no-backbone")])
    assert result.exit_code == 2 and "--init-backbone" in result.output
    assert not (tmp_path / "no-backbone" / MODEL_FILE).exists()
    args = [*base, "--adv", "pir", "--init-backbone", str(tmp_path / "robust.safetensors"), "--lr", "1e-9"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "pir")])
    assert result.exit_code == 0, result.output
    trained = load_file(str(tmp_path / "pir" / MODEL_FILE))
    conv = next(k for k in trained if k.startswith("backbone.") and trained[k].ndim == 4)
    assert torch.allclose(trained[conv], donor.state_dict()[conv], atol=1e-4)  # a near-zero lr leaves it in place


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adv", "sat", "--adv-eps", "2"], "--adv-eps"),
        (["--adv", "sat", "--adv-eps", "nan"], "not a number"),
        (["--adv", "sat", "--adv-ratio", "0"], "adv-ratio"),
        (["--amp", "bf16", "--device", "cpu"], "--amp"),
        (["--nproc", "2", "--batch-size", "3"], "divide"),
    ],
)
def test_bad_training_options_exit_2(tmp_path, extra, message):
    args = ["train", "--image-size", "32x64", "--train-images", "8", "--epochs", "1", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "r" / MODEL_FILE).exists()


def test_resume_after_a_kill_mid_epoch_continues_from_the_last_step_checkpoint(tmp_path, monkeypatch):
    import harden.training.loop as loop

    settings = dict(adv="pgd", train_images=16, save_every=1)  # 4 steps per epoch, a checkpoint after each
    _train(tmp_path / "straight", epochs=2, **settings)

    real_save_state, real_commit = loop.save_state, loop.commit_epoch
    saved_steps = []

    def save_then_die(path, model, optimizer, progress, extra):  # inside an epoch
        real_save_state(path, model, optimizer, progress, extra)
        saved_steps.append(progress.step)
        if progress.step == 6:  # step 2 of epoch 2
            raise KeyboardInterrupt("killed mid-epoch")

    def commit_and_count(run_dir, model, config, trained, optimizer, progress):  # at an epoch's end
        real_commit(run_dir, model, config, trained, optimizer, progress)
        saved_steps.append(progress.step)

    monkeypatch.setattr(loop, "save_state", save_then_die)
    monkeypatch.setattr(loop, "commit_epoch", commit_and_count)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", epochs=2, **settings)
    monkeypatch.setattr(loop, "save_state", real_save_state)
    monkeypatch.setattr(loop, "commit_epoch", real_commit)
    assert saved_steps == [1, 2, 3, 4, 5, 6]  # steps 1-3 mid-epoch, 4 at the epoch's end, then 5 and 6

    trained_steps = []
    real_loss = MixedAdversarial.loss

    def counting_loss(self, *args, step, **kwargs):
        trained_steps.append(step)
        return real_loss(self, *args, step=step, **kwargs)

    monkeypatch.setattr(MixedAdversarial, "loss", counting_loss)
    _train(tmp_path / "resumed", epochs=2, resume=True, **settings)
    assert trained_steps == [6, 7]  # only the two steps after the checkpoint
    a, b = load_file(str(tmp_path / "straight" / MODEL_FILE)), load_file(str(tmp_path / "resumed" / MODEL_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for key in ("train_loss", "train_adv_pixel_accuracy", "val_miou"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], abs=1e-12)


def _torchrun(nproc, run_dir, epochs, resume=False):
    args = [sys.executable, "-m", "harden", "train", "--model", "segmenter_tiny", "--adv", "sat", "--image-size"]
    args += ["32x64", "--train-images", "8", "--val-images", "4", "--batch-size", "4", "--adv-steps", "2"]
    args += ["--epochs", str(epochs), "--no-progress", "--out", str(run_dir), "--nproc", str(nproc)]
    args += ["--resume"] if resume else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_two_processes_match_one_and_resume_with_another_world_size(tmp_path):
    _torchrun(1, tmp_path / "one", epochs=2)
    output = _torchrun(2, tmp_path / "two", epochs=2)
    assert "torch.distributed.run" in output and output.count("epoch 2/2") == 1  # rank 0 alone logs
    one, two = load_file(str(tmp_path / "one" / MODEL_FILE)), load_file(str(tmp_path / "two" / MODEL_FILE))
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-3
    assert not all(torch.equal(one[k], create_model("segmenter_tiny", K).state_dict()[k]) for k in one)
    rows_one, rows_two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    for a, b in zip(rows_one, rows_two, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_miou"] == pytest.approx(b["val_miou"], abs=1e-3)
        assert a["train_adv_pixel_accuracy"] == pytest.approx(b["train_adv_pixel_accuracy"], abs=1e-3)

    _torchrun(2, tmp_path / "one", epochs=3, resume=True)  # one process, then two
    _torchrun(1, tmp_path / "two", epochs=3, resume=True)  # two processes, then one
    one, two = load_file(str(tmp_path / "one" / MODEL_FILE)), load_file(str(tmp_path / "two" / MODEL_FILE))
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-3
    assert [r["epoch"] for r in _rows(tmp_path / "one")] == [1, 2, 3]
