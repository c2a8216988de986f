"""`harden verify FILE.onnx` on models harden never trained or exported (tests/foreign_models.py):
each runs to a verdict (exit 0 or 1, never 2) with the twin–engine parity reported, faithful
float32 files pass, and the report says the deployment is unsigned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import foreign_models as fm
import pytest
import torch
from cli_helpers import DECIDED_BY_CONSTRUCTION
from click.testing import CliRunner

from harden.cli import cli

QUICK = ["--data", "synthetic", "--image-size", "32x64", "--images", "2", "--batch-size", "2", "--attack", "pgd",
         "--iters", "2", "--queries", "5", "--eps", "4/255", "--divergence-steps", "2", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return fm.train(fm.UNet())


@pytest.fixture(scope="module")
def foreign(unet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Every foreign file by name (trained once for the module)."""
    out = tmp_path_factory.mktemp("foreign")
    files = {
        "unet-ts13": fm.export(unet, out / "unet13.onnx", opset=13),
        "unet-ts17": fm.export(unet, out / "unet17.onnx", opset=17),
        "unet-dynamo": fm.export(unet, out / "unet_dynamo.onnx", dynamo=True),
    }
    source = files["unet-ts17"]
    files["unet-ort-optimised"] = fm.ort_optimised(source, out / "unet_ortopt.onnx")
    files["unet-qdq"] = fm.ort_quantised(source, out / "unet_qdq.onnx", "qdq")
    files["unet-qoperator"] = fm.ort_quantised(source, out / "unet_qop.onnx", "qoperator")
    files["unet-dynamic"] = fm.ort_quantised(source, out / "unet_dyn.onnx", "dynamic")
    files["unet-fp16"] = fm.ort_float16(source, out / "unet_fp16.onnx")
    segformer = fm.train(fm.tiny_segformer())
    files["segformer-ts17"] = fm.export(segformer, out / "segformer.onnx", input_name="pixel_values",
                                        output_name="logits")  # fmt: skip
    files["segformer-dynamo"] = fm.export(segformer, out / "segformer_dynamo.onnx", dynamo=True,
                                          input_name="pixel_values", output_name="logits")  # fmt: skip
    files["segformer-fp16"] = fm.ort_float16(files["segformer-ts17"], out / "segformer_fp16.onnx")
    files["segformer-ort-optimised"] = fm.ort_optimised(files["segformer-ts17"], out / "segformer_ortopt.onnx")
    segformer.model.save_pretrained(out / "segformer-hf", safe_serialization=True)  # the user's own folder
    files["segformer-hf-folder"] = out / "segformer-hf"
    return files


REFERENCE = {"unet-qdq": "unet-ts17", "unet-qoperator": "unet-ts17", "unet-dynamic": "unet-ts17",
             "unet-fp16": "unet-ts17", "segformer-fp16": "segformer-ts17"}  # fmt: skip
FAITHFUL_FP32 = ["unet-ts13", "unet-ts17", "unet-dynamo", "unet-ort-optimised", "segformer-ts17",
                 "segformer-dynamo", "segformer-ort-optimised"]  # fmt: skip


def _verify(path: Path, report: Path, *extra: str) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["verify", str(path), *QUICK, "--out", str(report), *extra])
    summary = json.loads((report / "verify.json").read_text()) if (report / "verify.json").is_file() else {}
    return result.exit_code, result.output, summary


@pytest.mark.parametrize("name", [*FAITHFUL_FP32, *REFERENCE])
def test_a_foreign_file_runs_to_a_verdict_with_parity_reported(foreign, name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    extra = ["--reference", str(foreign[REFERENCE[name]])] if name in REFERENCE else []
    code, output, summary = _verify(foreign[name], tmp_path / "report", *extra)
    assert code in (0, 1, 3), output  # a verdict, never "bad input"
    assert summary["deployment"]["signed"] is False and "unsigned" in " ".join(summary["not_judged"])
    parity = summary["parity"]["clean"]["graph"][0]
    assert 0 <= parity["max_abs_diff"] < float("inf")
    assert "max |Δlogit|" in output
    if name in FAITHFUL_FP32:  # the twin is the file: engine and twin agree to float rounding, and no gate fails
        assert code != 1, output  # on QUICK's few images a sampled gate may stay undecided (exit 3), never fail
        assert parity["max_abs_diff"] < 1e-3 and parity["agreement"] > 0.999
    else:  # quantised or fp16: the precision twin follows the engine closely
        assert parity["agreement"] > 0.97, parity


def test_demo_fp32_file_copied_alone_verifies_unsigned(fp32_export, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alone = tmp_path / "elsewhere" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(fp32_export / "model.fp32.onnx", alone)
    args = ["--image-size", "64x64", "--eot", "2", "--draws", "2", *DECIDED_BY_CONSTRUCTION]
    code, output, summary = _verify(alone, tmp_path / "report", *args)
    assert code == 0, output  # sampled gates cleared by construction: the test is about an unsigned file
    assert "unsigned: no manifest" in output
    assert summary["deployment"]["signed"] is False
    audits = {a["name"]: a for a in summary["audits"]}
    assert audits["graph-ops"]["status"] == "n/a" and "no manifest" in audits["graph-ops"]["detail"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "unsigned: no manifest" in html


def test_preprocessing_outside_the_graph_is_applied_to_engine_and_twin(foreign, unet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model that reads [0, 255] pixels normalised outside the graph predicts exactly what the
    [0, 1] model predicts once --pixel-range/--mean/--std say so — and not without them."""
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 70.0)

    class Normalised(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x = (255·pixels − mean) / std
            m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
            return self.inner((x * s + m) / 255)

    normalised = fm.export(Normalised(unet).eval(), tmp_path / "normalised.onnx")
    _, _, expected = _verify(foreign["unet-ts17"], tmp_path / "plain")
    stated = ["--pixel-range", "255", "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std))]
    code, output, got = _verify(normalised, tmp_path / "normalised", *stated, *DECIDED_BY_CONSTRUCTION)
    assert code == 0, output  # sampled gates cleared by construction: the test is about the preprocessing
    assert got["clean"]["engine"]["miou"] == pytest.approx(expected["clean"]["engine"]["miou"], abs=1e-6)
    assert "[0, 255] pixels, normalised by mean" in got["deployment"]["interface_text"]
    _, _, unstated = _verify(normalised, tmp_path / "unstated")
    assert unstated["clean"]["engine"]["miou"] != pytest.approx(expected["clean"]["engine"]["miou"], abs=1e-3)


def test_bad_input_for_a_bare_file_exits_2_with_what_to_do(foreign, fp32_export, tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    no_data = runner.invoke(cli, ["verify", str(foreign["unet-ts17"]), "--images", "1"])
    assert no_data.exit_code == 2 and "pass --data" in no_data.output

    import onnx

    model = onnx.load(str(foreign["unet-ts17"]))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(model.graph.node[0].output[0]))
    two_outputs = tmp_path / "two.onnx"
    onnx.save(model, str(two_outputs))
    ambiguous = runner.invoke(cli, ["verify", str(two_outputs), *QUICK])
    assert ambiguous.exit_code == 2 and "--output NAME" in ambiguous.output

    wrong_name = runner.invoke(cli, ["verify", str(foreign["unet-ts17"]), *QUICK, "--input", "nope"])
    assert wrong_name.exit_code == 2 and "no such input" in wrong_name.output

    half_normalised = runner.invoke(cli, ["verify", str(foreign["unet-ts17"]), *QUICK, "--mean", "1,2,3"])
    assert half_normalised.exit_code == 2 and "--mean and --std together" in half_normalised.output

    for_export = runner.invoke(cli, ["verify", str(fp32_export), "--pixel-range", "255", "--images", "1"])
    assert for_export.exit_code == 2 and "harden export" in for_export.output

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    bare_engine = runner.invoke(cli, ["verify", str(engine), *QUICK])
    assert bare_engine.exit_code == 2 and "ONNX" in bare_engine.output


def test_a_users_hf_model_is_the_source_twin_of_its_bare_file(foreign, fp32_export, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = f"hf:{foreign['segformer-hf-folder']}"
    code, output, summary = _verify(
        foreign["segformer-ts17"], tmp_path / "r", "--twin", "graph", "--twin", source, *DECIDED_BY_CONSTRUCTION
    )  # the test is about the source twin, not the verdict
    assert code == 0, output
    assert summary["twins"] == ["graph", "source"]
    parity = summary["parity"]["clean"]["source"][0]
    assert parity["agreement"] > 0.999 and parity["max_abs_diff"] < 1e-3  # the PyTorch model computes the file
    assert "not tied to the file" in " ".join(summary["not_judged"])
    signed = CliRunner().invoke(cli, ["verify", str(fp32_export), "--twin", source, "--images", "1"])
    assert signed.exit_code == 2 and "RUN_DIR" in signed.output
