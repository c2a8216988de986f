"""Multiscale wrapper, mean-field CRF layer, their training/export, and the Arnab et al. studies."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from harden.attacks.checks import white_box_beats_surrogate
from harden.attacks.evaluate import evaluate_robustness
from harden.cli import cli
from harden.data import open_dataset
from harden.errors import InputError
from harden.models import create_model
from harden.models.compose import compose, network_of
from harden.models.crf import CRFConfig, MeanFieldCRF, WithCRF, crf_unaries
from harden.models.multiscale import MultiScale
from harden.run import load_model


@pytest.mark.parametrize("name", ["deeplabv3_tiny", "segformer_tiny", "segmenter_tiny"])
def test_a_single_scale_of_one_is_the_network_itself(name):
    network = create_model(name, 5).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(MultiScale(network, (1.0,)).eval()(x), network(x))


@pytest.mark.parametrize("fusion", ["max", "mean"])
def test_scales_are_fused_per_pixel_after_upsampling(fusion):
    network = create_model("deeplabv3_tiny", 4).eval()
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        half = F.interpolate(
            network(F.interpolate(x, scale_factor=0.5, mode="bilinear")), size=(32, 64), mode="bilinear"
        )
        full = network(x)
        fused = MultiScale(network, (0.5, 1.0), fusion).eval()(x)
    expected = torch.maximum(half, full) if fusion == "max" else (half + full) / 2
    torch.testing.assert_close(fused, expected)


@pytest.mark.parametrize("scales", [(), (0.0, 1.0), (1.0, 1.0), (5.0,)])
def test_bad_scales_are_refused(scales):
    with pytest.raises(InputError):
        MultiScale(create_model("deeplabv3_tiny", 4), scales)


def test_crf_gradients_match_finite_differences():
    crf = MeanFieldCRF(iterations=2, window=5, spatial_weight=2.0, bilateral_weight=3.0).double()
    unaries = torch.randn(2, 3, 6, 7, dtype=torch.double, requires_grad=True)
    image = torch.rand(2, 3, 6, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(crf, (unaries, image))
    # the kernel weights are learnable: their gradients too
    assert torch.autograd.gradcheck(
        lambda ws, wb: _with_weights(crf, ws, wb)(unaries.detach(), image.detach()),
        (
            torch.tensor(2.0, dtype=torch.double, requires_grad=True),
            torch.tensor(3.0, dtype=torch.double, requires_grad=True),
        ),
    )


def _with_weights(crf: MeanFieldCRF, ws: torch.Tensor, wb: torch.Tensor) -> MeanFieldCRF:
    del crf.spatial_weight, crf.bilateral_weight
    crf.spatial_weight, crf.bilateral_weight = ws, wb  # type: ignore[assignment]
    return crf


def _two_regions(height: int = 16, width: int = 32, noise: float = 1.2):
    image = torch.zeros(1, 3, height, width)
    image[..., width // 2 :] = 1.0
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[..., width // 2 :] = 1
    unaries = F.one_hot(truth, 2).permute(0, 3, 1, 2).float() + noise * torch.randn(1, 2, height, width)
    return image, truth, unaries


def test_the_crf_smooths_noisy_unaries_and_keeps_the_image_edge():
    image, truth, unaries = _two_regions()
    out = MeanFieldCRF()(unaries, image)
    before = (unaries.argmax(1) == truth).float().mean()
    after = (out.argmax(1) == truth).float().mean()
    assert before < 0.8 and after > 0.99  # the edge column between the regions survives too
    assert torch.softmax(out, 1).amax(1).mean() > torch.softmax(unaries, 1).amax(1).mean()  # confident marginals


def test_a_crf_with_zero_weights_returns_the_unaries():
    image, _, unaries = _two_regions()
    torch.testing.assert_close(MeanFieldCRF(spatial_weight=0, bilateral_weight=0)(unaries, image), unaries)


@pytest.mark.parametrize("bad", [{"window": 4}, {"iterations": 0}, {"color_sigma": 0.0}, {"spatial_weight": -1.0}])
def test_bad_crf_settings_are_refused(bad):
    with pytest.raises(InputError):
        CRFConfig(**bad)


def test_a_composed_model_exports_and_runs_in_onnx_runtime_and_the_graph_twin(tmp_path):
    from harden.export.onnx_export import export_onnx
    from harden.runtime.graph_twin import GraphTwin

    network = create_model("deeplabv3_tiny", 5).eval()
    model = compose(network, scales=(0.5, 1.0), crf=CRFConfig(iterations=2, window=5)).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, image_size=(32, 64))  # runs onnx.checker
    x = torch.rand(2, 3, 48, 96)  # another size than exported: the graph is dynamic
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        twin = GraphTwin(onnx.load(str(path))).eval()(x).numpy()
    np.testing.assert_allclose(twin, got, atol=1e-4, rtol=1e-4)


def _train(tmp_path, *extra: str):
    run_dir = tmp_path / "run"
    args = ["train", "--model", "deeplabv3_tiny", "--epochs", "1", "--image-size", "32x64", "--train-images", "8"]
    result = CliRunner().invoke(cli, [*args, "--val-images", "2", "--no-progress", "--out", str(run_dir), *extra])
    return run_dir, result


def test_train_with_scales_and_a_crf_learns_the_crf_weights_end_to_end(tmp_path):
    run_dir, result = _train(tmp_path, "--scales", "0.5,1", "--fusion", "mean", "--crf", "--crf-window", "5")
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())["model"]
    assert config["scales"] == [0.5, 1.0] and config["fusion"] == "mean" and config["crf"]["window"] == 5
    model, _ = load_model(run_dir)
    assert isinstance(model, WithCRF) and isinstance(model.base, MultiScale) and model.base.fusion == "mean"
    weights = load_file(str(run_dir / "model.safetensors"))
    assert float(weights["crf.spatial_weight"]) != 3.0  # trained, not the initial value
    assert isinstance(crf_unaries(model), MultiScale)


def test_fine_tuning_a_multiscale_crf_model_starts_from_a_single_scale_run(tmp_path):
    run_dir, result = _train(tmp_path)
    assert result.exit_code == 0, result.output
    tuned = tmp_path / "tuned"
    args = ["train", "--model", "deeplabv3_tiny", "--epochs", "1", "--image-size", "32x64", "--train-images", "8",
            "--val-images", "2", "--lr", "1e-12", "--scales", "0.5,1", "--crf", "--init-from", str(run_dir),
            "--no-progress", "--out", str(tuned)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    before = load_model(run_dir)[0].state_dict()
    after = network_of(load_model(tuned)[0]).state_dict()
    conv = "backbone.stem.0.0.weight"
    torch.testing.assert_close(after[conv], before[conv], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "extra", [("--scales", "0,1"), ("--scales", "a,b"), ("--crf", "--crf-window", "4"), ("--crf-weights", "1")]
)
def test_bad_inference_options_exit_2_and_write_nothing(tmp_path, extra):
    run_dir, result = _train(tmp_path, *extra)
    assert result.exit_code == 2, result.output
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_a_scale_too_small_for_the_model_exits_2_naming_the_scale(tmp_path):
    run_dir = tmp_path / "seg"
    args = ["train", "--model", "segformer_tiny", "--image-size", "32x64", "--scales", "0.5,1", "--out", str(run_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "at scale 0.5" in result.output


class _Saturated(torch.nn.Module):
    """The network's logits ×1e4: same predictions, softmax saturated, CE gradients zero — a
    textbook gradient-masking model."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) * 1e4


def test_the_surrogate_check_flags_gradient_masking_and_passes_an_honest_model(trained_run):
    network, _ = load_model(trained_run)
    dataset = open_dataset("synthetic", "val", size=(32, 64), num_images=4)
    masked = evaluate_robustness(
        _Saturated(network), dataset, ["fgsm"], [8 / 255], surrogates={"unaries": network}, progress=False
    )
    check = white_box_beats_surrogate(masked)
    assert check.status == "fail" and "fgsm" in check.detail and "unaries" in check.detail
    honest = evaluate_robustness(network, dataset, ["fgsm"], [8 / 255], surrogates={"itself": network}, progress=False)
    assert white_box_beats_surrogate(honest).status == "pass"
    plain = evaluate_robustness(network, dataset, ["fgsm"], [8 / 255], progress=False)
    assert white_box_beats_surrogate(plain).status == "n/a"


def test_attacking_a_crf_run_also_crafts_on_its_unaries(tmp_path):
    run_dir, result = _train(tmp_path, "--crf", "--crf-window", "3", "--crf-iterations", "2")
    assert result.exit_code == 0, result.output
    report = tmp_path / "report"
    args = ["attack", str(run_dir), "--attack", "fgsm", "--eps", "8/255", "--images", "2", "--examples", "0"]
    result = CliRunner().invoke(cli, [*args, "--no-progress", "--out", str(report)])
    assert result.exit_code in (0, 1), result.output
    assert "fgsm[unaries]" in result.output and "white>surrogate" in result.output
    summary = json.loads((report / "attack.json").read_text())
    assert {r["crafted_on"] for r in summary["rows"] if r["attack"] == "fgsm"} == {"", "unaries"}


def test_transfer_scales_table_has_every_cell_and_its_white_box_cell_matches_harden_attack(trained_run, tmp_path):
    out = tmp_path / "study"
    args = ["study", "transfer-scales", str(trained_run), "--other", str(trained_run), "--attack", "fgsm",
            "--eps", "8/255", "--images", "4", "--no-progress", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "transfer_scales.json").read_text())
    assert data["sources"] == ["50%", "75%", "100%", "multiscale"]
    assert len(data["targets"]) == 5 and len(data["cells"]) == 4 * 5
    assert (out / "transfer_scales.png").stat().st_size > 0
    assert len(data["observations"]) == 3 and all(isinstance(o["holds"], bool) for o in data["observations"])
    model, _ = load_model(trained_run)
    dataset = open_dataset("synthetic", "val", size=(32, 64), num_images=4)
    evaluation = evaluate_robustness(model, dataset, ["fgsm"], [8 / 255], progress=False)
    expected = evaluation.runs[0].worst().miou / evaluation.clean_scores()[0]
    white = next(c for c in data["cells"] if c["source"] == c["target"] == "100%")
    assert white["iou_ratio"] == pytest.approx(expected, abs=1e-6)
    # the other run is the same network at 100 %: it sees the 100 % perturbations exactly as 100 % does
    other = next(c for c in data["cells"] if c["source"] == "100%" and c["target"] == data["targets"][-1])
    assert other["iou_ratio"] == pytest.approx(white["iou_ratio"], abs=1e-6)


def test_crf_study_compares_three_settings_and_reports_its_checks(trained_run, tmp_path):
    out = tmp_path / "study"
    args = ["study", "crf", str(trained_run), "--attack", "fgsm,fgsm-ll", "--eps", "8/255", "--images", "4",
            "--crf-window", "5", "--no-progress", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    data = json.loads((out / "crf_study.json").read_text())
    failed = any(c["status"] == "fail" for c in data["checks"])
    assert result.exit_code == (1 if failed else 0), result.output
    assert [(r["attack"], r["kind"]) for r in data["rows"]] == [("fgsm", "untargeted"), ("fgsm-ll", "targeted")]
    assert next(c for c in data["checks"] if c["name"] == "white>surrogate")["status"] in ("pass", "fail")
    assert {o["claim"][:20] for o in data["observations"]} >= {"the CRF resists unta", "the CRF does not res"}
    # the no-CRF column is the plain model's own white-box IoU ratio
    model, _ = load_model(trained_run)
    dataset = open_dataset("synthetic", "val", size=(32, 64), num_images=4)
    evaluation = evaluate_robustness(model, dataset, ["fgsm"], [8 / 255], progress=False)
    expected = evaluation.runs[0].worst().miou / evaluation.clean_scores()[0]
    assert data["rows"][0]["no_crf"] == pytest.approx(expected, abs=1e-6)
    assert data["clean"]["CRF"]["entropy"] < data["clean"]["no CRF"]["entropy"]  # mean field sharpens the marginals


def test_studies_refuse_bad_input(trained_run, tmp_path):
    base = ["--images", "2", "--no-progress", "--out", str(tmp_path / "r")]
    for args in (
        ["study", "transfer-scales", str(trained_run), "--scales", "0.5,-1", *base],
        ["study", "transfer-scales", str(trained_run), "--attack", "nope", *base],
        ["study", "crf", str(trained_run), "--eps", "2", *base],
        ["study", "crf", str(trained_run), "--crf-iterations", "0", *base],
        ["study", "crf", str(tmp_path / "missing"), *base],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
    assert not (tmp_path / "r").exists()
