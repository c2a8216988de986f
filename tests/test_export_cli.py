"""`harden export` end to end: files, parity, manifest hashes, precision variants, bad input."""

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import run_cli as _run

from harden.errors import InputError
from harden.export.arithmetic import SATURATION_FREE_WEIGHT, int8_weights
from harden.export.files import load_onnx, sha256_file
from harden.export.manifest import ExportManifest, read_manifest, verify_files


@pytest.fixture(scope="module")
def int8_export(ram_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "int8"
    result = _run("export", ram_run, "--out", out, "--precision", "int8", "--calib-images", "4", "--parity-images", "3")
    assert result.exit_code == 0, result.output
    (out.parent / "output.txt").write_text(result.output)
    return out


def test_int8_export_writes_checked_files_parity_and_a_manifest_that_verifies(ram_run, int8_export):
    out = int8_export
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.fp32.onnx",
        "model.int8.onnx",
        "parity.json",
    ]
    manifest = read_manifest(out)
    typed = ExportManifest.read(out)  # every part typed: the int8 record carries its recipe and arithmetic
    assert typed.to_dict() == manifest and typed.calibration() is not None and typed.engine_arithmetic
    assert verify_files(out) == ["model.fp32.onnx", "model.int8.onnx"]
    assert manifest["checkpoint"]["sha256"] == sha256_file(ram_run / "model.safetensors")
    assert manifest["rad_seed_input"] is True and manifest["ram"]["rad"] is True
    assert manifest["inputs"]["image"] == ["batch", 3, "height", "width"] and manifest["inputs"]["rad_seed"] == []
    assert manifest["harden_nodes"] == {"Mas": 4, "Rad": 4}
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    parity = json.loads((out / "parity.json").read_text())
    assert parity["fp32"]["argmax_agreement"] == 1.0 and parity["fp32"]["rad_seeds"] == [0, 1, 2]
    assert parity["int8"]["passed"] is True and parity["int8"]["max_abs_diff"] > 0  # int8 really is lower precision

    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Mas", "Rad"} <= ops
    zero_points = [
        onnx.numpy_helper.to_array(t) for t in int8.graph.initializer if t.name.endswith("zero_point")
    ]  # symmetric, as TensorRT requires
    assert zero_points and all((z == 0).all() for z in zero_points)
    # 7-bit weights by default: ONNX Runtime's int8 kernels cannot saturate on any x86-64 CPU
    (int8_entry,) = [e for e in manifest["onnx"] if e["precision"] == "int8"]
    assert int8_entry["int8_weights"] == "reduced" and int8_entry["int8_weight_bits"] == 7
    weights = int8_weights(int8)
    assert weights.tensors > 0 and weights.beyond == 0 and 32 < weights.max_abs <= SATURATION_FREE_WEIGHT
    arithmetic = manifest["engine_arithmetic"]["int8"]
    assert arithmetic["passed"] is True and arithmetic["int8_weights_beyond_bound"] == 0
    assert "engine arithmetic int8" in (out.parent / "output.txt").read_text()


def test_a_changed_file_no_longer_verifies(int8_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_export, copy)
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"model\.int8\.onnx does not match the sha256"):
        verify_files(copy)


def test_fp16_keeps_attention_in_fp32_and_runs_in_onnxruntime(ram_run, tmp_path):
    out = tmp_path / "fp16"
    result = _run("export", ram_run, "--out", out, "--precision", "fp16", "--parity-images", "2")
    assert result.exit_code == 0, result.output
    entry = read_manifest(out)["onnx"][1]
    assert entry["precision"] == "fp16" and {"Mas", "Rad"} <= set(entry["kept_fp32"])  # MAS replaced Softmax
    model = onnx.load(str(out / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    session = ort.InferenceSession(str(out / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    logits = session.run(None, {"image": image, "rad_seed": np.array(3)})[0]
    assert logits.dtype == np.float32 and logits.shape[-2:] == (64, 64) and np.isfinite(logits).all()


def test_a_failed_parity_check_exits_1_and_says_so(ram_run, tmp_path, monkeypatch):
    from harden.export import parity

    strict = parity.Tolerance(atol=0.0, rtol=0.0, min_agreement=1.0, max_miou_change=0.0)
    monkeypatch.setitem(parity.TOLERANCES, "fp32", strict)
    result = _run("export", ram_run, "--out", tmp_path / "e", "--parity-images", "2")
    assert result.exit_code == 1
    assert "does not match PyTorch" in result.output
    assert read_manifest(tmp_path / "e")["parity"]["fp32"]["passed"] is False


def test_no_parity_skips_the_comparison(trained_run, tmp_path):
    result = _run("export", trained_run, "--out", tmp_path / "e", "--no-parity")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "e")
    assert manifest["parity"] is None and not (tmp_path / "e" / "parity.json").exists()
    assert manifest["inputs"]["image"] == ["batch", 3, 32, 64]  # PSPNet: static H, W, and why
    assert "adaptive pooling" in manifest["static_size_reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int4"], "int4"),
        (["--precision", "int8", "--calib-data", "cityscapes:/nonexistent"], "nonexistent"),
        (["--parity-images", "0"], "0"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(trained_run, tmp_path, args, message):
    result = _run("export", trained_run, "--out", tmp_path / "e", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_not_a_run_exits_2(tmp_path):
    (tmp_path / "junk").mkdir()
    result = _run("export", tmp_path / "junk", "--out", tmp_path / "e")
    assert result.exit_code == 2 and "not a run directory" in result.output
    assert not (tmp_path / "e").exists()


def test_existing_output_needs_overwrite_and_overwrite_replaces_it(trained_run, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run("export", trained_run, "--out", out, "--no-parity")
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = _run("export", trained_run, "--out", out, "--no-parity", "--overwrite")
    assert result.exit_code == 2 and "not a harden export" in result.output  # --overwrite only replaces exports
    assert (out / "keep.txt").read_text() == "mine"

    other = tmp_path / "f"
    assert _run("export", trained_run, "--out", other, "--no-parity").exit_code == 0
    old_hash = read_manifest(other)["onnx"][0]["sha256"]
    assert _run("export", trained_run, "--out", other, "--no-parity", "--overwrite").exit_code == 0
    assert read_manifest(other)["onnx"][0]["sha256"] == old_hash  # same model, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "f"]  # no staging left behind


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_trt_without_tensorrt_exits_2_before_any_work(trained_run, tmp_path):
    result = _run("export", trained_run, "--out", tmp_path / "e", "--trt")
    assert result.exit_code == 2 and "TensorRT is not installed" in result.output
    assert list(tmp_path.iterdir()) == []


def test_external_data_outside_the_directory_is_refused(tmp_path):
    tensor = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../secret.bin")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        [tensor],
    )
    (tmp_path / "d").mkdir()
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "d" / "m.onnx"))
    with pytest.raises(InputError, match="outside"):
        load_onnx(tmp_path / "d" / "m.onnx")
    (tmp_path / "d" / "bad.onnx").write_bytes(b"not a protobuf \xff\xfe")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        load_onnx(tmp_path / "d" / "bad.onnx")
