"""Precision provenance: re-signed deployments whose quantisation or precision was changed after
export fail by name (issue 27), and a faithful int8 export passes."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from harden.cli import cli
from harden.export.manifest import MANIFEST_FILE, FileRecord
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.provenance import float32_attention, int8_provenance
from harden.runtime.twins import open_deployment


@pytest.fixture(scope="module")
def int8_export(ram_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "int8"
    args = ["export", str(ram_run), "--out", str(out), "--precision", "int8", "--calib-images", "4", "--no-parity"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _resign(export, name, change):
    """Change `name` in `export` with `change(model)` and recompute the manifest's hash, as a
    toolchain step after export would."""
    path = export / name
    model = onnx.load(str(path))
    change(model)
    onnx.save_model(model, str(path))
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    manifest["onnx"] = [
        {**e, **FileRecord.of(path, export, e["precision"]).to_dict()} if e["path"] == name else e
        for e in manifest["onnx"]
    ]
    (export / MANIFEST_FILE).write_text(json.dumps(manifest))


def _activation_quantizers(model):
    constants = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]


def _set(model, name, value):
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value(numpy_helper.to_array(tensor)), name))
            return
    raise AssertionError(name)


def test_a_faithful_int8_export_re_derives_exactly(int8_export):
    manifest = json.loads((int8_export / MANIFEST_FILE).read_text())
    (entry,) = [e for e in manifest["onnx"] if e["precision"] == "int8"]
    assert entry["calibration"]["images"] == 4 and entry["calibration"]["weights"] == "reduced"
    check = int8_provenance(open_deployment(int8_export))
    assert check.status == "pass", check.detail


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("scale x8", "scale"),
        ("all scales x4", "scale"),
        ("zero point 20", "zero point"),
    ],
)
def test_re_signed_quantisation_faults_fail_by_node(int8_export, tmp_path, fault, message):
    broken = tmp_path / "broken"
    shutil.copytree(int8_export, broken)

    def change(model):
        quantizers = _activation_quantizers(model)
        targets = quantizers[:1] if fault != "all scales x4" else quantizers
        for node in targets:
            if fault == "zero point 20":
                _set(model, node.input[2], lambda z: np.full_like(z, 20))
            else:
                _set(model, node.input[1], lambda s: s * (8 if fault == "scale x8" else 4))

    _resign(broken, "model.int8.onnx", change)
    first = _activation_quantizers(onnx.load(str(int8_export / "model.int8.onnx")))[0].name
    check = int8_provenance(open_deployment(broken))
    assert check.status == "fail" and message in check.detail, check.detail
    assert f"node {first}" in check.detail or "the quantised graph was changed" in check.detail


def test_an_int8_file_without_a_recipe_cannot_pass(int8_export, tmp_path):
    broken = tmp_path / "old"
    shutil.copytree(int8_export, broken)
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    for entry in manifest["onnx"]:
        entry.pop("calibration", None)
    (broken / MANIFEST_FILE).write_text(json.dumps(manifest))
    check = int8_provenance(open_deployment(broken))
    assert check.status == "fail" and "records no calibration recipe" in check.detail


def test_mas_and_softmax_moved_to_fp16_fail(fp32_export, tmp_path):
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from harden.export.onnx_export import finish_model
    from harden.export.onnx_ops import register_schemas

    register_schemas()
    model = onnx.load(str(fp32_export / "model.fp32.onnx"))
    # the faithful conversion blocks MAS/RAD/Softmax (harden.export.precision.FP32_OPS); this one does not
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST))
    import onnx_ir
    from onnx_ir.passes.common import TopologicalSortPass

    ir_model = onnx_ir.from_proto(converted)
    TopologicalSortPass()(ir_model)
    converted = onnx_ir.to_proto(ir_model)
    finish_model(converted)
    images = torch.rand(1, 3, 64, 64)
    lowered = float32_attention(GraphTwin(converted), images)
    assert lowered.status == "fail" and "Mas on torch.float16" in lowered.detail, lowered.detail
    faithful = float32_attention(GraphTwin.from_file(fp32_export / "model.fp32.onnx"), images)
    assert faithful.status == "pass"
