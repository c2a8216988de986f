"""`harden.export.fuse_attention`: the engine builder's RobustAttention nodes compute what the graph did."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from harden.export.fuse_attention import fuse_robust_attention_
from harden.export.onnx_export import check_onnx, export_onnx
from harden.export.onnx_ops import DOMAIN, ROBUST_ATTENTION
from harden.models import create_model, find_attention
from harden.ram import RAMConfig, insert_ram_


def _exported(tmp_path, config: RAMConfig) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = create_model("segformer_tiny", num_classes=5).eval()
    insert_ram_(model, config)
    export_onnx(model, tmp_path / "model.onnx", (64, 64))
    return onnx.load(tmp_path / "model.onnx")


def _run(model: onnx.ModelProto, image: np.ndarray, seed: int) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"image": image}
    if any(i.name == "rad_seed" for i in session.get_inputs()):
        feeds["rad_seed"] = np.array(seed, dtype=np.int64)
    return session.run(None, feeds)[0]


def test_fused_graph_is_checked_and_computes_the_same_bits_in_onnx_runtime(tmp_path):
    original = _exported(tmp_path, RAMConfig())
    fused = copy.deepcopy(original)
    report = fuse_robust_attention_(fused)
    layers = len(find_attention(create_model("segformer_tiny", num_classes=5)))
    assert report.fused == layers and not report.skipped
    nodes = [n for n in fused.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == [ROBUST_ATTENTION] * layers
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attributes["threshold"] == pytest.approx(0.3) and attributes["p"] == pytest.approx(0.5)
    assert 0 < attributes["scale"] < 1  # 1/√d, taken from the Mul it replaces
    assert [n.op_type for n in fused.graph.node].count("Mul") < [n.op_type for n in original.graph.node].count("Mul")
    onnx.save(fused, tmp_path / "fused.onnx")
    check_onnx(tmp_path / "fused.onnx")
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    for seed in (0, 12345):
        assert np.array_equal(_run(fused, image, seed), _run(original, image, seed))
    assert not np.array_equal(_run(fused, image, 0), _run(fused, image, 12345))  # RAD still draws per seed


def test_chains_without_rad_are_left_alone_with_the_reason(tmp_path):
    original = _exported(tmp_path, RAMConfig(rad=False))
    fused = copy.deepcopy(original)
    report = fuse_robust_attention_(fused)
    assert report.fused == 0 and not report.skipped  # no Rad node: nothing to fuse, nothing to explain
    assert [n.op_type for n in fused.graph.node] == [n.op_type for n in original.graph.node]


def test_a_temperature_between_the_logits_and_mas_is_reported(tmp_path):
    fused = _exported(tmp_path, RAMConfig(temperature=2.0))
    report = fuse_robust_attention_(fused)
    assert report.fused == 0 and report.skipped
    assert all("MatMul used only by it" in reason for reason in report.skipped)
