"""`harden verify` and its parts: the graph twin against ONNX Runtime and the source model, a
faithful export passing the gates, and deliberately broken deployments failing them by name."""

import base64
import io
import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_helpers import DECIDED_BY_CONSTRUCTION
from cli_helpers import run_cli as _run
from PIL import Image

from harden.export.manifest import MANIFEST_FILE, FileRecord
from harden.export.ort_session import ort_session
from harden.export.precision import to_int8
from harden.ram import fixed_rad_seed
from harden.run import load_model
from harden.runtime.graph_twin import GraphTwin

FAST = ["--images", "2", "--iters", "2", "--queries", "5", "--divergence-steps", "2", "--eot", "2", "--draws", "2",
        "--eps", "8/255", "--attack", "fgsm,pgd", "--no-progress"]  # fmt: skip


TESTCASE_CHILDREN = {"skipped", "failure", "system-out", "system-err"}


class _TagBalance(HTMLParser):
    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"})

    def __init__(self):
        super().__init__()
        self.open, self.images = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def _assert_page_renders(page):
    """No browser on these machines: the page's tags must nest, and every embedded PNG decode."""
    parser = _TagBalance()
    parser.feed(page)
    parser.close()
    assert parser.open == [] and parser.images
    for source in parser.images:
        header, _, data = source.partition(",")
        assert header == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        assert image.width > 100 and image.height > 50


def _junit_suite(path):
    """The report's testsuite, after checking what the JUnit schema CI systems read (Jenkins /
    Surefire junit-10.xsd) requires: <testsuites> of <testsuite name tests failures errors> with
    a time of digits and at most 3 decimals, <testcase name> holding only the schema's children,
    <failure message>, and counts that match the cases."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert {"name", "tests", "failures", "errors"} <= set(suite.keys())
    assert re.fullmatch(r"[0-9]+(\.[0-9]{1,3})?", suite.get("time", "0"))
    cases = suite.findall("testcase")
    assert all(case.get("name") for case in cases)
    assert {child.tag for case in cases for child in case} <= TESTCASE_CHILDREN
    failures = [f for case in cases for f in case.findall("failure")]
    assert all(f.get("message") for f in failures)
    assert int(suite.get("tests", "-1")) == len(cases) and int(suite.get("failures", "-1")) == len(failures)
    return suite


def _redeploy(export_dir, tmp_path, name, change):
    """A copy of the export whose `name` was changed by `change(model)` and re-hashed in the
    manifest: a broken deployment that a pipeline produced, not a tampered file."""
    out = tmp_path / f"broken-{name}"
    shutil.copytree(export_dir, out)
    path = out / name
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["onnx"] = [FileRecord.of(path, out, e["precision"]).to_dict() if e["path"] == name else e
                        for e in manifest["onnx"]]  # fmt: skip
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def test_graph_twin_matches_onnxruntime_and_source_gradients(ram_run, fp32_export):
    twin = GraphTwin.from_file(fp32_export / "model.fp32.onnx")
    source, _ = load_model(ram_run)
    images = torch.rand(2, 3, 64, 64)
    session = ort.InferenceSession(str(fp32_export / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": images.numpy(), "rad_seed": np.array(11, dtype=np.int64)})[0]
    with torch.no_grad(), fixed_rad_seed(twin, 11):
        got = twin(images).numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()

    def grad(model):
        x = images.clone().requires_grad_(True)
        with fixed_rad_seed(model, 11):
            torch.nn.functional.cross_entropy(model(x), torch.zeros(2, 64, 64, dtype=torch.long)).backward()
        return x.grad

    twin_grad, source_grad = grad(twin), grad(source.eval())
    assert twin_grad.abs().sum() > 0
    torch.testing.assert_close(twin_grad, source_grad, atol=1e-6, rtol=1e-3)


def test_precision_twin_fake_quantises_with_straight_through_gradients(fp32_export, tmp_path):
    int8 = tmp_path / "model.int8.onnx"
    calibration = (torch.rand(1, 3, 64, 64).numpy() for _ in range(4))
    to_int8(fp32_export / "model.fp32.onnx", int8, calibration, with_rad=True)
    twin = GraphTwin.from_file(int8)
    assert twin.op_counts["QuantizeLinear"] > 0
    images = torch.rand(2, 3, 64, 64)
    # The twin emulates the file's arithmetic (Q/DQ as the ONNX spec defines them), so it is compared
    # with ONNX Runtime running the file as written: the fused int8 kernels of the default session
    # depend on the CPU (harden.export.arithmetic judges those).
    session = ort_session(int8, as_written=True)
    expected = session.run(None, {"image": images.numpy(), "rad_seed": np.array(3, dtype=np.int64)})[0]
    x = images.clone().requires_grad_(True)
    with fixed_rad_seed(twin, 3):
        out = twin(x)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert (out.detach().numpy().argmax(1) == expected.argmax(1)).mean() > 0.995
    assert np.abs(out.detach().numpy() - expected).max() < 0.05  # rounding, not a different arithmetic
    fp32 = GraphTwin.from_file(fp32_export / "model.fp32.onnx")
    with torch.no_grad(), fixed_rad_seed(fp32, 3):
        assert not torch.equal(fp32(images), out.detach())  # quantisation is really emulated


def test_faithful_export_passes_and_writes_reports(ram_run, fp32_export, tmp_path):
    """The reports of a passing verification. The sampled gates are cleared by construction (on 2
    images their verdict would be sampling noise); audits, engine arithmetic and sanity checks decide."""
    report = tmp_path / "report"
    result = _run("verify", fp32_export, "--twin", "graph", "--twin", ram_run, "--out", report, *FAST,
                  *DECIDED_BY_CONSTRUCTION)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "verification PASSED" in result.output
    summary = json.loads((report / "verify.json").read_text())
    assert summary["schema"] == "harden-verify-report-v4" and summary["verdict"] == "pass"
    assert summary["deployment"]["files"]["model.fp32.onnx"]
    status = {c["name"]: c["status"] for c in summary["checks"]}
    assert status.pop("white>surrogate") == "n/a" and set(status.values()) == {"pass"}  # two surrogates: no premise
    assert {"white>black", "transfer>query"} <= set(status)
    assert all(g["outcome"] == "pass" for g in summary["gates"]) and summary["confidence"]["level"] == 0.95
    intervals = [g["interval"] for g in summary["gates"] if g["interval"] is not None]
    assert all((i["low"] if i["low"] is not None else -math.inf) <= i["point"]
               <= (i["high"] if i["high"] is not None else math.inf) for i in intervals)  # null: unbounded  # fmt: skip
    assert summary["machine"]["cpu"] and "onnxruntime" in summary["machine"]["libraries"]
    assert summary["parity"]["clean"]["source"][0]["agreement"] == 1.0
    suite = _junit_suite(report / "junit.xml")
    assert suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == len(summary["gates"])
    times = {case.get("name"): float(case.get("time")) for case in suite.findall("testcase")}
    assert all(t > 0 for name, t in times.items() if name.startswith(("survival", "clean-agreement")))
    page = (report / "report.html").read_text()
    assert "PASS" in page and page.count("data:image/png;base64,") == 3
    assert "does not say the model is robust" in page and "No robust-mIoU floor was set" in page
    assert "Headline: clean → worst case" in page and f"Gates: all {len(summary['gates'])} passed" in page
    assert "survival vs graph (same candidates)" in page  # the headline's ratio is the gate's (like for like)
    assert summary["command"].startswith("harden ") and summary["created"] in page
    assert "'mas': True" not in page and "MAS caps every attention weight" in page  # RAM settings in words
    # the images shown are the worst ones: their pAcc at ε are the lowest of the per-image worst cases
    per_image = sorted(p["pixel_accuracy"] for p in summary["worst_case"][-1]["per_image"])
    shown = re.findall(r"<td>image (\d+)</td><td>([0-9.]+)</td>", page)
    assert shown and [float(a) for _, a in shown] == pytest.approx(per_image[: len(shown)], abs=5e-4)
    _assert_page_renders(page)


def test_mas_removed_from_the_graph_fails(fp32_export, tmp_path):
    def remove_mas(model):
        for node in model.graph.node:
            if node.domain == "harden" and node.op_type == "Mas":
                node.domain, node.op_type = "", "Softmax"
                del node.attribute[:]
                node.attribute.append(onnx.helper.make_attribute("axis", -1))

    broken = _redeploy(fp32_export, tmp_path, "model.fp32.onnx", remove_mas)
    result = _run("verify", broken, "--twin", "graph", "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 1, result.output
    assert "MAS was removed" in result.output
    assert int(_junit_suite(tmp_path / "r" / "junit.xml").get("failures", "0")) >= 1


def test_perturbed_weights_fail(ram_run, fp32_export, tmp_path):
    def perturb(model):
        generator = np.random.default_rng(0)
        for tensor in model.graph.initializer:
            array = onnx.numpy_helper.to_array(tensor)
            if array.dtype == np.float32 and array.ndim >= 2:
                noisy = array + generator.normal(0, 0.5 * (array.std() + 1e-3), array.shape).astype(np.float32)
                tensor.CopyFrom(onnx.numpy_helper.from_array(noisy, tensor.name))

    broken = _redeploy(fp32_export, tmp_path, "model.fp32.onnx", perturb)
    result = _run("verify", broken, "--twin", "graph", "--twin", ram_run, "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 1, result.output
    assert "the deployed weights are not the trained ones" in result.output
    assert "FAIL] clean-agreement[source]" in result.output
    summary = json.loads((tmp_path / "r" / "verify.json").read_text())
    failed = [g["name"] for g in summary["gates"] if g["outcome"] == "fail"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"Gates: {len(failed)} of {len(summary['gates'])} failed" in page
    assert f"FAIL: {len(failed)} of {len(summary['gates'])} gates failed" in page
    gate_rows = re.findall(r"<tr class='(pass|fail)'><td>([^<]+)</td><td>(?:pass|fail)</td>", page)
    listed = [name for _, name in gate_rows if name in {g["name"] for g in summary["gates"]}]
    assert listed[: len(failed)] == failed  # failing gates first


def test_badly_calibrated_int8_fails(ram_run, fp32_export, tmp_path):
    broken = tmp_path / "int8"
    shutil.copytree(fp32_export, broken)
    dark = (0.02 * torch.rand(1, 3, 64, 64).numpy() for _ in range(4))  # nothing like the data
    to_int8(broken / "model.fp32.onnx", broken / "model.int8.onnx", dark, with_rad=True)
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    manifest["onnx"].append(FileRecord.of(broken / "model.int8.onnx", broken, "int8").to_dict())
    manifest["precision"] = "int8"
    (broken / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = _run("verify", broken, "--twin", "graph", "--twin", ram_run, "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 1, result.output
    assert "int8 calibration range does not cover the data" in result.output


def test_rad_disabled_in_the_engine_fails(ram_run, fp32_export, tmp_path):
    def disable_rad(model):
        for node in model.graph.node:
            if node.domain == "harden" and node.op_type == "Rad":
                for attribute in node.attribute:
                    if attribute.name == "p":
                        attribute.f = 0.0

    broken = _redeploy(fp32_export, tmp_path, "model.fp32.onnx", disable_rad)
    result = _run("verify", broken, "--twin", ram_run, "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 1, result.output
    assert "RAD was removed or disabled" in result.output
    assert "RAD is disabled in the engine" in result.output


def test_tampered_file_and_bad_gates_are_bad_input(fp32_export, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(fp32_export, tampered)
    with open(tampered / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    result = _run("verify", tampered, *FAST)
    assert result.exit_code == 2 and "does not match the sha256" in result.output
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nsurvival = 1.5\n")
    result = _run("verify", fp32_export, "--gates", gates, *FAST)
    assert result.exit_code == 2 and "survival must be a number in [0, 1]" in result.output
    result = _run("verify", fp32_export, "--gate", "nonsense=0.5", *FAST)
    assert result.exit_code == 2 and "unknown gate nonsense" in result.output
    result = _run("verify", tmp_path, *FAST)
    assert result.exit_code == 2 and "not a harden export" in result.output


@pytest.mark.parametrize("attacks", ["pgd", "pgd,apgd-ce", "fgsm"])
def test_a_faithful_export_passes_whatever_the_attack_list(fp32_export, tmp_path, attacks):
    """A sanity check whose premise the attack list leaves out (iterative>single needs a
    single-step AND an iterative attack) is n/a with its reason, not a failure (docs/design.md §6)."""
    result = _run(
        "verify",
        fp32_export,
        "--twin",
        "graph",
        "--out",
        tmp_path / "r",
        *FAST,
        "--attack",
        attacks,
        *DECIDED_BY_CONSTRUCTION,
    )  # the sanity checks decide; the sampled gates are cleared
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "verify.json").read_text())
    status = {c["name"]: c["status"] for c in summary["checks"]}
    assert status["iterative>single"] == ("pass" if "," in attacks and "fgsm" in attacks else "n/a")
    assert "fail" not in status.values()
    if status["iterative>single"] == "n/a":
        assert "n/a, premise not in this run: iterative>single (needs a single-step" in result.output


def test_a_white_box_run_without_gradients_fails_the_gradient_check():
    from harden.attacks.checks import gradients_are_usable
    from harden.attacks.evaluate import AttackRun, Evaluation

    def evaluation(*kinds):
        return Evaluation(19, 1, 1, [], [AttackRun("x", 4 / 255, kind, {}) for kind in kinds], {})

    assert gradients_are_usable(evaluation("white-box")).status == "fail"  # premise there, nothing measured
    assert gradients_are_usable(evaluation("black-box")).status == "n/a"  # no white-box attack asked for


def test_a_failing_parity_names_the_first_diverging_node(fp32_export, tmp_path, monkeypatch):
    """A twin op that computes something else (here GELU's Erf, off by 0.5) makes engine and
    graph twin disagree; the report must name the first Erf node, not only say FAIL."""
    from harden.runtime.op_table import OPS, Impl, latest

    erf = latest("", "Erf")
    monkeypatch.setitem(OPS, ("", "Erf"), [Impl(lambda inputs, attrs: erf(inputs, attrs) + 0.5)])
    first_erf = next(n.name for n in onnx.load(str(fp32_export / "model.fp32.onnx")).graph.node if n.op_type == "Erf")
    result = _run("verify", fp32_export, "--twin", "graph", "--out", tmp_path / "r", *FAST)
    # the parity gates do not pass (fail, or undecided on 2 images): either way the node is named
    assert result.exit_code in (1, 3), result.output
    assert f"first diverging node: {first_erf} (Erf" in result.output
    summary = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert summary["localisation"]["node"] == first_erf and summary["localisation"]["op_type"] == "Erf"
    assert summary["localisation"]["max_abs"] > 0.4
    assert "Where the engine diverges" in (tmp_path / "r" / "report.html").read_text()


def test_a_faithful_export_has_no_diverging_node(fp32_export):
    from harden.runtime.localise import first_divergence

    path = fp32_export / "model.fp32.onnx"
    assert first_divergence(path, GraphTwin.from_file(path), torch.rand(2, 3, 64, 64), 3, "fp32") is None


def test_a_graph_twin_alone_says_what_it_cannot_judge(fp32_export, ram_run, tmp_path):
    result = _run("verify", fp32_export, "--twin", "graph", "--out", tmp_path / "r", *FAST, *DECIDED_BY_CONSTRUCTION)
    assert result.exit_code == 0, result.output
    assert "[not judged] whether the export is faithful to the trained model" in result.output
    summary = json.loads((tmp_path / "r" / "verify.json").read_text())
    assert len(summary["not_judged"]) == 2
    assert "What this verdict could not judge" in (tmp_path / "r" / "report.html").read_text()
    with_source = _run("verify", fp32_export, "--twin", "graph", "--twin", ram_run, "--out", tmp_path / "s", *FAST,
                       *DECIDED_BY_CONSTRUCTION)  # fmt: skip
    assert with_source.exit_code == 0 and "[not judged]" not in with_source.output
