"""The engine-arithmetic audit: ONNX Runtime's kernels on this CPU against the file as written.

What must hold on every x86-64 CPU, with or without VNNI, is asserted here without depending on
the CPU the tests run on: the int16 pair-sum bound that 7-bit weights guarantee (checked on an
emulation of the non-VNNI u8s8 instruction), the weight ranges `harden export` writes, the
cause a non-VNNI CPU gets named, and the real comparison of both ONNX Runtime arithmetics on a
file whose weights cannot saturate.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import DECIDED_BY_CONSTRUCTION
from click.testing import CliRunner

import harden.runtime.verify_audits
from harden.cli import cli
from harden.export.arithmetic import (
    SATURATION_FREE_WEIGHT,
    ArithmeticComparison,
    audit_file,
    cpu_int8,
    int8_weights,
    judge,
)
from harden.export.precision import to_int8

INT16_MAX = 32767


def u8s8_gemm_without_vnni(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, K) uint8 × (K, N) int8 as AVX2 `vpmaddubsw` + `vpmaddwd` compute it: each pair of
    products along K is added in saturating int16, then the pairs are summed in int32."""
    a32, b32 = a.astype(np.int32), b.astype(np.int32)
    if a.shape[1] % 2:
        a32, b32 = np.pad(a32, ((0, 0), (0, 1))), np.pad(b32, ((0, 1), (0, 0)))
    products = a32[:, :, None] * b32[None, :, :]  # (M, K, N)
    pairs = products[:, 0::2] + products[:, 1::2]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(1)


def test_seven_bit_weights_cannot_saturate_the_pair_sums_eight_bit_weights_can():
    rng = np.random.default_rng(0)
    activations = rng.integers(200, 256, size=(16, 64), dtype=np.uint8)  # bright pixels: the worst case
    for bound, saturates in ((SATURATION_FREE_WEIGHT, False), (127, True)):
        weights = rng.integers(bound // 2, bound + 1, size=(64, 8)).astype(np.int8)
        exact = activations.astype(np.int64) @ weights.astype(np.int64)
        emulated = u8s8_gemm_without_vnni(activations, weights)
        assert (emulated != exact).any() == saturates, bound
    extreme = np.full((1, 2), 255, dtype=np.uint8) @ np.full((2, 1), SATURATION_FREE_WEIGHT, dtype=np.int64)
    assert int(extreme.max()) <= INT16_MAX  # 2·255·64 = 32640


@pytest.fixture(scope="module")
def int8_files(fp32_export, tmp_path_factory):
    """The fixture model quantised with each weight range (same calibration images)."""
    out = tmp_path_factory.mktemp("int8")
    images = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)).numpy() for i in range(4)]
    files = {}
    for weights in ("reduced", "full"):
        files[weights] = out / f"model.{weights}.onnx"
        to_int8(fp32_export / "model.fp32.onnx", files[weights], iter(images), with_rad=True, weights=weights)
    return files


def test_int8_weight_ranges_are_read_from_the_file(int8_files):
    reduced = int8_weights(onnx.load(str(int8_files["reduced"])))
    full = int8_weights(onnx.load(str(int8_files["full"])))
    assert reduced.tensors == full.tensors > 0
    assert reduced.beyond == 0 and reduced.max_abs <= SATURATION_FREE_WEIGHT and not reduced.can_saturate
    assert full.beyond > 0 and full.max_abs == 127 and full.example is not None


def test_both_arithmetics_agree_on_a_file_that_cannot_saturate(int8_files, fp32_export):
    """Real ONNX Runtime sessions, fused kernels vs Q/DQ as written: on any x86-64 CPU a file
    with 7-bit weights differs by rounding only."""
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7)).numpy()
    labels = np.random.default_rng(0).integers(0, 19, size=(2, 64, 64))
    feeds = [{"image": images, "rad_seed": np.array(5, dtype=np.int64)}]
    for path, precision in ((int8_files["reduced"], "int8"), (fp32_export / "model.fp32.onnx", "fp32")):
        verdict = audit_file(path, precision, feeds, labels, 19, "logits")
        assert verdict.passed, verdict.detail()
        assert verdict.comparison.argmax_agreement >= verdict.min_agreement
        assert verdict.cause is None and "computes the file" in verdict.detail()
    assert verdict.comparison.max_abs_diff < 1e-4  # fp32: summation order only


def _comparison(agreement: float) -> ArithmeticComparison:
    return ArithmeticComparison(images=2, max_abs_diff=1.06, argmax_agreement=agreement, miou_deployed=0.3,
                                miou_as_written=0.35)  # fmt: skip


def test_a_cpu_without_vnni_is_named_with_the_remedy(int8_files):
    full = int8_weights(onnx.load(str(int8_files["full"])))
    avx2_only = cpu_int8({"avx2", "fma"})
    assert avx2_only.vnni is False and "no VNNI" in avx2_only.describe()
    verdict = judge(_comparison(0.945), "int8", full, avx2_only, "ONNX Runtime CPU")
    assert not verdict.passed
    assert "saturating int16" in verdict.cause and "without VNNI" in verdict.cause
    assert "The file is not at fault" in verdict.cause
    assert "--int8-weights reduced" in verdict.remedy and "TensorRT" in verdict.remedy
    assert f"{full.beyond} of the file's {full.tensors}" in verdict.cause

    vnni = cpu_int8({"avx2", "avx512f", "avx512_vnni"})
    assert vnni.vnni is True
    other = judge(_comparison(0.945), "int8", full, vnni, "ONNX Runtime CPU")
    assert not other.passed and "not the known int16 saturation" in other.cause  # no false diagnosis
    reduced = int8_weights(onnx.load(str(int8_files["reduced"])))
    assert "not the known" in judge(_comparison(0.9), "int8", reduced, avx2_only, "x").cause
    assert judge(_comparison(0.999), "int8", full, avx2_only, "x").passed  # agreeing kernels pass anywhere
    assert not judge(_comparison(0.995), "fp32", full, vnni, "x").passed  # fp32 allows summation order only


def test_verify_reports_the_audit_and_fails_on_it_alone(fp32_export, tmp_path, monkeypatch):
    """A deviating engine fails its own gate and the verdict says the file is faithful. The two
    ONNX Runtime arithmetics agree on this CPU, so the measurement is replaced by the figures
    measured on an AVX2-only CPU (issue 22); the audit's kernels are tested above."""
    fast = ["--images", "2", "--iters", "2", "--queries", "5", "--divergence-steps", "2", "--eot", "2",
            "--draws", "2", "--eps", "8/255", "--attack", "fgsm,pgd", "--no-progress"]  # fmt: skip
    report = tmp_path / "pass"
    # the sampled gates cleared by construction: this test is about the engine-arithmetic gate
    result = CliRunner().invoke(cli, ["verify", str(fp32_export), "--twin", "graph", "--out", str(report), *fast,
                                      *DECIDED_BY_CONSTRUCTION])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[pass] engine-arithmetic" in result.output and "computes the file" in result.output
    summary = json.loads((report / "verify.json").read_text())
    assert summary["engine_arithmetic"]["status"] == "pass"
    assert summary["engine_arithmetic"]["comparison"]["argmax_agreement"] >= 0.999
    assert "Engine arithmetic" in (report / "report.html").read_text()

    def deviating(path, precision, feeds, labels, num_classes, output, device="cpu", to_label_size=None):
        weights = int8_weights(onnx.load(str(path)))
        weights = type(weights)(weights.tensors + 3, 3, 127, "conv.weight_quantized")
        return judge(_comparison(0.945), "int8", weights, cpu_int8({"avx2"}), f"ONNX Runtime CPU ({path.name})")

    monkeypatch.setattr(harden.runtime.verify_audits, "audit_file", deviating)
    report = tmp_path / "fail"
    result = CliRunner().invoke(cli, ["verify", str(fp32_export), "--twin", "graph", "--out", str(report), *fast,
                                      *DECIDED_BY_CONSTRUCTION])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "[FAIL] engine-arithmetic" in result.output and "without VNNI" in result.output
    assert "the file is faithful to the model, but this engine on this hardware computes something else" in (
        result.output
    )
    summary = json.loads((report / "verify.json").read_text())
    assert summary["verdict"] == "fail" and summary["engine_arithmetic"]["status"] == "fail"
    assert "--int8-weights reduced" in summary["engine_arithmetic"]["remedy"]
    page = (report / "report.html").read_text()
    assert "saturating int16" in page and "--int8-weights reduced" in page
