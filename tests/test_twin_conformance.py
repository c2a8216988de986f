"""The graph twin against ONNX's own operator conformance cases (`onnx.backend.test.case.node`),
checked by `harden.runtime.conformance`: every case the twin runs gives the reference output
(or ONNX Runtime's, where the engine departs from the reference), its gradients match ONNX
Runtime's finite differences, and what it cannot compute is refused when the graph is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from harden.cli import cli
from harden.errors import InputError
from harden.export.ort_session import ort_session
from harden.runtime import conformance
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.interface import ModelInterface
from harden.runtime.op_table import KNOWN_OPSETS, OPS, Impl


@pytest.fixture(scope="module")
def cases() -> list[Any]:
    return conformance.node_cases()


@pytest.fixture(scope="module")
def results(cases: list[Any]) -> list[conformance.CaseResult]:
    return [conformance.check(case) for case in cases]


def test_no_node_case_gives_a_wrong_number_or_fails_while_running(results: list[conformance.CaseResult]) -> None:
    bad = [f"{r.name}: {r.outcome} ({r.detail})" for r in results if r.outcome in ("wrong", "raises")]
    assert not bad, "\n".join(bad)
    tally = conformance.tally(results)
    # 1,232 with onnx 1.23 / onnxruntime 1.32 (docs/graph_twin_ops.md); a fall means an op regressed
    assert tally["pass"] + tally["follows-ort"] >= 1200, tally


def test_cases_the_twin_cannot_run_are_refused_at_load_with_node_op_and_reason(
    results: list[conformance.CaseResult],
) -> None:
    refused = {r.name: r.detail for r in results if r.outcome in ("refused", "not-in-table")}
    assert "Loop ×1 (#0): control flow with a subgraph is not supported" in refused["test_loop11"]
    assert "If ×1 (#0): its condition is not a constant of the graph" in refused["test_if"]
    training = refused["test_training_dropout"]
    assert "Dropout ×1 (#0): input training_mode is not a constant of the graph" in training


def test_gradients_match_onnx_runtime_finite_differences(
    cases: list[Any], results: list[conformance.CaseResult]
) -> None:
    ran = {r.name for r in results if r.outcome in ("pass", "follows-ort")}
    checked, disagree = 0, []
    for case in cases:
        if case.name not in ran:
            continue
        verdict = conformance.gradient_check(case)
        if verdict is None:
            checked += 1
        elif not verdict.startswith("skip"):
            disagree.append(f"{case.name}: {verdict}")
    assert not disagree, "\n".join(disagree)
    assert checked >= 850  # 894 with onnx 1.23: the rest have no float data input or a kink under the step


# -- the cases named in the issue, each against ONNX Runtime --------------------------------------


def _one_node(
    node: onnx.NodeProto, shape: tuple[int, ...], opset: int, constants: dict[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in (constants or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _twin_and_engine(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    path = tmp_path / "case.onnx"
    onnx.save(model, str(path))
    engine = ort_session(path, as_written=True).run(["y"], {"x": x})[0]
    twin = GraphTwin(model, interface=ModelInterface(input="x", output="y"))
    value = twin.intermediates(torch.from_numpy(x))["y"]
    assert value is not None
    return value.detach().numpy(), engine


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_follows_its_opset(opset: int, tmp_path: Path) -> None:
    """Before opset 13 Softmax normalises the input coerced to 2-D at `axis` (all of C·H·W at
    axis=1); from 13 along the axis alone. A 4-D probability head differs by up to 0.32."""
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32) * 3
    model = _one_node(helper.make_node("Softmax", ["x"], ["y"], axis=1), x.shape, opset)
    twin, engine = _twin_and_engine(model, x, tmp_path)
    np.testing.assert_allclose(twin, engine, rtol=1e-5, atol=1e-6)
    per_axis = torch.softmax(torch.from_numpy(x), dim=1).numpy()
    assert np.allclose(twin, per_axis, atol=1e-3) == (opset == 13)


def test_average_pool_without_strides_pools_with_stride_one(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((1, 2, 9, 9)).astype(np.float32)
    model = _one_node(helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3]), x.shape, 17)
    twin, engine = _twin_and_engine(model, x, tmp_path)
    assert twin.shape == (1, 2, 7, 7)
    np.testing.assert_allclose(twin, engine, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_with_auto_pad_same_matches_onnx_runtime(auto_pad: str, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 10, 11)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((4, 3, 4, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[2, 2])
    twin, engine = _twin_and_engine(_one_node(node, x.shape, 17, {"w": w}), x, tmp_path)
    assert twin.shape == engine.shape == (1, 4, 5, 6)
    np.testing.assert_allclose(twin, engine, rtol=1e-4, atol=1e-5)


def test_an_if_on_a_constant_condition_is_inlined(tmp_path: Path) -> None:
    """torch.jit-scripted exports keep `If`s whose condition is known when the graph is built."""
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(False))),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="choose"),
    ]
    graph = helper.make_graph(
        nodes,
        "if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    twin, engine = _twin_and_engine(model, x, tmp_path)
    np.testing.assert_array_equal(twin, engine)
    np.testing.assert_array_equal(twin, -x)


# -- refusals at load -----------------------------------------------------------------------------


def test_an_opset_newer_than_the_table_is_refused_at_load() -> None:
    model = _one_node(helper.make_node("Relu", ["x"], ["y"]), (1, 2), 17)
    model.opset_import[0].version = 99
    with pytest.raises(InputError, match=r"imports opset 99 of ai.onnx; the graph twin knows opsets up to 28"):
        GraphTwin(model, interface=ModelInterface(input="x", output="y"))


def test_an_op_version_the_table_lacks_is_refused_naming_node_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph's opset picks the implementation; a version no implementation covers is refused."""
    monkeypatch.setitem(OPS, ("", "Relu"), [Impl(lambda x, a: torch.relu(x[0]), since=14)])
    model = _one_node(helper.make_node("Relu", ["x"], ["y"], name="act"), (1, 4), 13)
    with pytest.raises(
        InputError, match=r"Relu ×1 \(act\): not defined at opset 13 in the twin's table \(it covers opsets 14–28\)"
    ):
        GraphTwin(model, interface=ModelInterface(input="x", output="y"))
    resize = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up")
    old = _one_node(resize, (1, 1, 2, 2), 9, {"s": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(InputError, match=r"Resize ×1 \(up\): ONNX defines no Resize at opset 9"):
        GraphTwin(old, interface=ModelInterface(input="x", output="y"))


def test_a_graph_the_twin_cannot_compute_exits_2_from_verify(tmp_path: Path) -> None:
    """Before any attack: the message names the node, the op and the attribute."""
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="odd_resize", mode="lanczos")
    model = _one_node(node, (1, 3, 16, 16), 17, {"s": np.array([1, 1, 2, 2], np.float32)})
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    result = CliRunner().invoke(
        cli,
        ["verify", str(path), "--data", "synthetic", "--image-size", "16x16", "--images", "1", "--no-progress"],
    )
    assert result.exit_code == 2, result.output
    assert "odd_resize" in result.output and "mode=lanczos" in result.output


# -- the op table's opset ranges ------------------------------------------------------------------


def _onnx_range(name: str) -> tuple[int, int] | None:
    """(first, last) opset at which ONNX defines `name` and has not removed it (a deprecated
    version ends the range; GroupNormalization-18's deprecation still leaves it valid in 18–20)."""
    versions = []
    for opset in range(1, KNOWN_OPSETS[""] + 1):
        try:
            schema = onnx.defs.get_schema(name, opset, "")
        except onnx.defs.SchemaError:
            continue
        if schema.deprecated and schema.since_version == opset and versions and name != "GroupNormalization":
            break
        versions.append(opset)
    return (versions[0], versions[-1]) if versions else None


def test_the_op_table_covers_every_opset_of_each_op_without_gaps() -> None:
    """Like onnx2torch's per-version converters, without their gaps: every opset at which ONNX
    defines an op the table claims resolves to exactly one implementation."""
    gaps = []
    for (domain, name), impls in OPS.items():
        span = _onnx_range(name) if domain == "" else None
        if span is None:
            continue
        for opset in range(span[0], span[1] + 1):
            if sum(impl.covers(opset) for impl in impls) != 1:
                gaps.append(f"{name}@{opset}")
    assert not gaps, gaps


def test_an_op_before_onnx_defines_it_is_refused() -> None:
    model = _one_node(helper.make_node("Gelu", ["x"], ["y"], name="act"), (1, 4), 18)
    with pytest.raises(InputError, match=r"Gelu ×1 \(act\): ONNX defines no Gelu at opset 18"):
        GraphTwin(model, interface=ModelInterface(input="x", output="y"))


# -- what torch 2.13's exporter writes for transformers at opset 23 --------------------------------


def test_a_segformer_exported_at_opset_23_runs_in_the_twin_with_its_attention_ops(tmp_path: Path) -> None:
    """The dynamo exporter turns scaled_dot_product_attention into ONNX `Attention` and GELU into
    `Gelu` at opset 23 (RotaryEmbedding it does not write). The twin gives ONNX Runtime's logits
    and the source model's input gradient."""
    pytest.importorskip("transformers")
    import foreign_models as fm

    torch.manual_seed(0)
    model = fm.tiny_segformer().eval()
    path = tmp_path / "segformer23.onnx"
    example = torch.rand(1, 3, *fm.SIZE)
    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["output"], dynamo=True,
                      external_data=False, opset_version=23)  # fmt: skip
    written = onnx.load(str(path))
    ops = {node.op_type for node in written.graph.node}
    assert {"Attention", "Gelu", "LayerNormalization"} <= ops
    images = torch.rand(1, 3, *fm.SIZE)  # the dynamo export has a static batch of one
    twin = GraphTwin(written, interface=ModelInterface(input="input", output="output"))
    engine = ort_session(path, as_written=True).run(["output"], {"input": images.numpy()})[0]
    inputs = images.clone().requires_grad_(True)
    logits = twin.intermediates(inputs)["output"]
    assert logits is not None
    np.testing.assert_allclose(logits.detach().numpy(), engine, rtol=1e-4, atol=1e-5)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (twin_grad,) = torch.autograd.grad((logits * weights).sum(), inputs)
    source_inputs = images.clone().requires_grad_(True)
    (source_grad,) = torch.autograd.grad((model(source_inputs) * weights).sum(), source_inputs)
    torch.testing.assert_close(twin_grad, source_grad, rtol=1e-3, atol=1e-5)


ALIGN, SYMMETRIC = (
    {"coordinate_transformation_mode": "align_corners"},
    {"coordinate_transformation_mode": "half_pixel_symmetric"},
)
RESIZES = [
    ("linear-align-corners-axes", {"mode": "linear", **ALIGN, "axes": [2, 3]}, [0.6, 0.7]),
    ("nearest-ceil-align-corners", {"mode": "nearest", **ALIGN, "nearest_mode": "round_prefer_ceil"}, [1, 1, 1.7, 0.6]),
    ("cubic-antialias", {"mode": "cubic", "antialias": 1, "exclude_outside": 1}, [1, 1, 0.45, 0.6]),
    ("linear-antialias-symmetric", {"mode": "linear", "antialias": 1, **SYMMETRIC}, [1, 1, 0.55, 0.8]),
]


@pytest.mark.parametrize(("attrs", "scales"), [r[1:] for r in RESIZES], ids=[r[0] for r in RESIZES])
def test_resize_off_torchs_fast_path_matches_onnx_runtime(
    attrs: dict[str, Any], scales: list[float], tmp_path: Path
) -> None:
    """Scales that do not divide the image evenly, on the gather path (not F.interpolate)."""
    x = np.random.default_rng(6).standard_normal((1, 2, 11, 13)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], **attrs)
    model = _one_node(node, x.shape, 19, {"s": np.array(scales, np.float32)})
    twin, engine = _twin_and_engine(model, x, tmp_path)
    assert twin.shape == engine.shape
    np.testing.assert_allclose(twin, engine, rtol=1e-4, atol=1e-5)


def test_a_node_meeting_two_devices_runs_on_one() -> None:
    """On a GPU, constants are GPU buffers while Shape gives CPU tensors: shape arithmetic goes to
    the CPU, anything else to the accelerator ("meta" stands in for the accelerator here)."""
    from harden.runtime.graph_program import device_for, on_one_device

    shape = torch.tensor([1, 64], dtype=torch.int64)
    index = torch.tensor([0], dtype=torch.int64, device="meta")
    assert device_for([shape, index]) == torch.device("cpu")
    assert device_for([torch.empty(2, 3, device="meta"), shape, None]) == torch.device("meta")
    assert device_for([torch.empty(70, dtype=torch.int64, device="meta"), shape]) == torch.device("meta")
    same = [shape, torch.ones(2), None]
    assert device_for(same) is None and on_one_device(same) is same
