"""ONNX export: the harden ops' function bodies, and every registry model in ONNX Runtime.

Everything here runs the exported file in ONNX Runtime (CPU) after onnx's full checker and
strict shape inference passed inside `export_onnx`.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import harden
from harden.export.onnx_export import IMAGE, RAD_SEED, export_onnx
from harden.export.onnx_ops import DOMAIN, PLUGIN_NAMESPACE
from harden.export.parity import check_parity
from harden.models import create_model
from harden.ram import RAMConfig, fixed_rad_seed, insert_ram_, robust_cores
from harden.ram.counter_rng import keep_mask_numpy


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class _RadOnly(nn.Module):
    """A graph that is one harden::rad call: the ONNX output reveals the mask exactly."""

    def __init__(self, counter: int, p: float) -> None:
        super().__init__()
        self.counter, self.p = counter, p

    def forward(self, attention: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        return torch.ops.harden.rad(attention, seed, self.counter, self.p)


class _MasOnly(nn.Module):
    def __init__(self, threshold: float, masked: bool) -> None:
        super().__init__()
        self.threshold, self.masked = threshold, masked

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.masked:  # a keep-mask computed in the graph, broadcast over heads, as Swin's
            mask = (torch.arange(logits.shape[-1]) % 3 != 1)[None, None, None, :].expand(1, 1, logits.shape[-2], -1)
        return torch.ops.harden.mas(logits, self.threshold, mask)


def _export_module(module: nn.Module, args: tuple, names: list[str], dims: dict, path: Path) -> onnx.ModelProto:
    from harden.export.onnx_export import finish_model, harden_translations

    program = torch.onnx.export(
        module.eval(), args, dynamo=True, opset_version=18, input_names=names, output_names=["out"],
        dynamic_shapes=dims, custom_translation_table=harden_translations(), verbose=False,
    )  # fmt: skip
    proto = program.model_proto
    finish_model(proto)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return proto


def test_rad_body_reproduces_the_pytorch_mask_bit_for_bit(tmp_path):
    dynamic = torch.export.Dim.DYNAMIC
    path = tmp_path / "rad.onnx"
    proto = _export_module(
        _RadOnly(counter=3, p=0.5),
        (torch.rand(2, 2, 8, 8), torch.tensor(0)),
        ["attention", "seed"],
        {"attention": {0: dynamic, 1: dynamic, 2: dynamic, 3: dynamic}, "seed": None},
        path,
    )
    node = next(n for n in proto.graph.node if n.domain == DOMAIN)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "Rad" and attributes["counter"] == 3
    assert attributes["plugin_namespace"] == PLUGIN_NAMESPACE.encode()
    assert [f.name for f in proto.functions] == ["Rad"]
    session = _session(path)
    for seed, shape in [(0, (1, 2, 5, 7)), (-5, (3, 1, 16, 9)), (2**62, (2, 4, 33, 17))]:
        attention = torch.rand(shape).softmax(-1)
        out = session.run(None, {"attention": attention.numpy(), "seed": np.array(seed)})[0]
        expected = torch.ops.harden.rad(attention, torch.tensor(seed), 3, 0.5).numpy()
        assert np.array_equal(out, expected)
        assert np.array_equal(out != 0, keep_mask_numpy(seed, 3, shape, 0.5))  # the published spec


@pytest.mark.parametrize("masked", [False, True])
def test_mas_body_matches_pytorch_and_bounds_every_weight(tmp_path, masked):
    dynamic = torch.export.Dim.DYNAMIC
    path = tmp_path / "mas.onnx"
    _export_module(
        _MasOnly(0.3, masked), (torch.randn(1, 2, 6, 12),), ["logits"], {"logits": {2: dynamic, 3: dynamic}}, path
    )
    session = _session(path)
    for keys in (12, 40):
        logits = torch.randn(1, 2, 7, keys) * 5
        out = session.run(None, {"logits": logits.numpy()})[0]
        expected = _MasOnly(0.3, masked)(logits).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-6)
        assert out.max() <= 0.3 + 1e-6
        if masked:
            assert (out[..., 1::3] == 0).all()


ATTENTION_MODELS = ["nonlocal_tiny", "segformer_tiny", "segmenter_tiny", "segmenter_tiny_mask", "swin_tiny"]
CASES = [(m, "off") for m in ["deeplabv3_tiny", "pspnet_tiny", *ATTENTION_MODELS]]
CASES += [(m, ram) for m in ATTENTION_MODELS for ram in ("mas", "mas+rad")]


@pytest.mark.parametrize(("name", "ram"), CASES)
def test_every_tiny_model_exports_and_matches_pytorch(tmp_path, name, ram):
    model = create_model(name, 5)
    if ram != "off":
        insert_ram_(model, RAMConfig(mas=True, rad=ram == "mas+rad"))
    model.eval()
    result = export_onnx(model, tmp_path / "model.onnx", image_size=(64, 64))
    expected_nodes = len(robust_cores(model)) if ram != "off" else 0
    assert sum(n for op, n in result.harden_nodes.items() if op != "Rad") == expected_nodes
    assert result.harden_nodes.get("Rad", 0) == (expected_nodes if ram == "mas+rad" else 0)
    assert (RAD_SEED in result.inputs) == (ram == "mas+rad")
    static = model.export_static_size is not None
    source = str(Path(harden.__file__).resolve().parent.parent).encode()
    assert source not in result.path.read_bytes()  # no source path: the bytes do not depend on the checkout
    assert result.inputs[IMAGE] == (["batch", 3, 64, 64] if static else ["batch", 3, "height", "width"])

    images = torch.rand(3, 3, 64, 64)
    labels = torch.randint(0, 5, (3, 64, 64))
    report = check_parity(model, result.path, images, labels, 5, with_rad=ram == "mas+rad")
    assert report.passed, report.reasons
    assert report.argmax_agreement == 1.0
    assert report.max_abs_diff < 1e-4
    if not static:  # the dynamic dims really are dynamic: another batch and size
        image = torch.rand(2, 3, 96, 128)
        feed = {IMAGE: image.numpy()}
        if ram == "mas+rad":
            feed[RAD_SEED] = np.array(11)
        out = _session(result.path).run(None, feed)[0]
        with torch.no_grad(), fixed_rad_seed(model, 11):
            expected = model(image).numpy()
        assert out.shape == (2, 5, 96, 128)
        assert (out.argmax(1) == expected.argmax(1)).all()


def test_rad_seed_changes_the_output_and_the_same_seed_repeats_it(tmp_path):
    model = create_model("segformer_tiny", 5)
    insert_ram_(model, RAMConfig(mas=True, rad=True))
    path = export_onnx(model.eval(), tmp_path / "model.onnx").path
    session = _session(path)
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    first, again, other = (session.run(None, {IMAGE: image, RAD_SEED: np.array(s)})[0] for s in (1, 1, 2))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
