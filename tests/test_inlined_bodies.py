"""harden's MAS and RAD bodies recognised where ONNX Runtime's optimiser inlined them, without a
source twin (issue 45): a faithful re-save passes graph-ops, a body with other parameters or
another op fails naming it (docs/verdicts.md §4)."""

import json
import tempfile
from pathlib import Path

import onnx
import pytest
from cli_helpers import resign
from click.testing import CliRunner

from harden.cli import cli
from harden.export.manifest import ExportManifest
from harden.runtime.audits import graph_ops_inlined
from harden.runtime.inlined import find_inlined
from harden.runtime.structure import rewritten


@pytest.fixture(scope="module")
def resaved(fp32_export):  # type: ignore[no-untyped-def]
    """ONNX Runtime's basic re-save of the export's fp32 file (functions inlined, constants folded)."""
    with tempfile.TemporaryDirectory() as scratch:
        model = rewritten(fp32_export / "model.fp32.onnx", "basic", Path(scratch))
    assert not any(n.domain == "harden" for n in model.graph.node)  # nothing left to count
    return model


def _expected(fp32_export):  # type: ignore[no-untyped-def]
    manifest = ExportManifest.read(fp32_export)
    counts = manifest.harden_nodes
    expected = {"mas": counts.get("Mas", 0) + counts.get("MaskedMas", 0), "rad": counts.get("Rad", 0)}
    return manifest, expected


def test_inlined_bodies_are_recognised_at_the_recorded_parameters(fp32_export, resaved) -> None:  # type: ignore[no-untyped-def]
    manifest, expected = _expected(fp32_export)
    assert manifest.ram is not None and expected["mas"] > 0 and expected["rad"] > 0
    found = find_inlined(resaved, manifest.ram.threshold, manifest.ram.drop_p)
    assert (found.mas, found.rad, found.differs) == (expected["mas"], expected["rad"], [])
    assert sorted(found.counters) == list(range(expected["rad"]))  # RAD's call indices, one per layer
    check = graph_ops_inlined(resaved, expected, manifest.ram)
    assert check is not None and check.status == "pass" and "recognised" in check.detail
    # the un-optimised file still has its harden nodes: the node count judges it, not this
    assert graph_ops_inlined(onnx.load(str(fp32_export / "model.fp32.onnx")), expected, manifest.ram) is None


def test_a_body_that_differs_fails_naming_it(fp32_export, resaved) -> None:  # type: ignore[no-untyped-def]
    manifest, expected = _expected(fp32_export)
    assert manifest.ram is not None
    # other parameters than the manifest records: MAS's threshold, RAD's drop probability
    other_t = find_inlined(resaved, manifest.ram.threshold / 2, manifest.ram.drop_p)
    assert other_t.mas == 0 and other_t.rad == expected["rad"]
    assert "Softmax" in other_t.differs[0] and "is not harden's Mas body" in other_t.differs[0]
    other_p = find_inlined(resaved, manifest.ram.threshold, manifest.ram.drop_p / 2)
    assert other_p.rad == 0 and "is not harden's Rad body" in other_p.differs[0]
    # one softsign of one MAS body replaced by tanh: that body is no longer harden's
    changed = onnx.ModelProto()
    changed.CopyFrom(resaved)
    softsign = next(n for n in changed.graph.node if n.op_type == "Softsign")
    softsign.op_type = "Tanh"
    check = graph_ops_inlined(changed, expected, manifest.ram)
    assert check is not None and check.status == "fail"
    assert f"{expected['mas'] - 1} MAS" in check.detail


def test_a_resigned_ort_resave_verified_with_the_graph_twin_alone_passes_graph_ops(fp32_export, resaved,
                                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """The case of issue 45: without a source twin, the graph-ops audit failed counting 0 harden
    nodes. One image: the test is about the audit, not the sampled gates."""
    out = resign(fp32_export, tmp_path / "resaved", resaved)
    report = tmp_path / "r"
    result = CliRunner().invoke(cli, ["verify", str(out), "--twin", "graph", "--images", "1", "--iters", "2",
                                      "--queries", "5", "--eot", "2", "--draws", "2", "--eps", "8/255", "--attack",
                                      "pgd", "--no-progress", "--out", str(report)])  # fmt: skip
    assert result.exit_code in (0, 3), result.output  # no gate fails; one image decides no sampled gate
    audits = {a["name"]: a for a in json.loads((report / "verify.json").read_text())["audits"]}
    assert audits["graph-ops"]["status"] == "pass", audits["graph-ops"]
    assert "inlined" in audits["graph-ops"]["detail"]
