"""verify.json's typed tree and its JSON Schema held to each other in both directions: a field
added to a record and not to the schema (or the other way round) fails here. Every verify.json
the suite writes is also read back typed and must write the same JSON (tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import harden.schemas
from harden.errors import InputError
from harden.runtime.report.record import (
    SCHEMA,
    AttackRow,
    Confidence,
    DeploymentRecord,
    GateRecord,
    ImageWorst,
    ParityRecord,
    VerifyReport,
    WorstCaseAt,
)
from harden.runtime.verify_result import DivergenceFigures

NO_DATA = {"source": None, "num_classes": None, "images": [], "calibration": {"disjoint": None}}
SCHEMA_FILE = Path(harden.schemas.__file__).parent / "verify.schema.json"


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())  # type: ignore[no-any-return]


def _names(record: type) -> set[str]:
    return {f.name for f in dataclasses.fields(record)}


def test_the_report_record_and_the_schema_name_the_same_fields() -> None:
    schema = _schema()
    assert set(schema["properties"]) == _names(VerifyReport) | {"schema"}
    assert set(schema["required"]) <= set(schema["properties"])
    optional = {f.name for f in dataclasses.fields(VerifyReport)} - set(schema["required"])
    assert optional <= {"engine_arithmetic", "localisation"}  # both may be null, the schema says so


@pytest.mark.parametrize(
    ("record", "path"),
    [
        (DeploymentRecord, ("properties", "deployment")),
        (Confidence, ("properties", "confidence")),
        (AttackRow, ("properties", "rows", "items")),
        (WorstCaseAt, ("properties", "worst_case", "items")),
        (ImageWorst, ("properties", "worst_case", "items", "properties", "per_image", "items")),
        (GateRecord, ("properties", "gates", "items")),
        (ParityRecord, ("$defs", "parity")),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_each_part_names_the_fields_its_schema_names(record: type, path: tuple[str, ...]) -> None:
    node: Any = _schema()
    for key in path:
        node = node[key]
    assert set(node["properties"]) == _names(record)
    assert set(node.get("required", [])) <= _names(record)


def _report() -> VerifyReport:
    """A small report built in Python: every typed part present."""
    from harden.attacks.checks import Check
    from harden.export.arithmetic import ArithmeticRecord, machine_facts
    from harden.export.files import versions
    from harden.runtime.report.record import ParitySection, Scores

    parity = ParityRecord(0.999, 0.01, 4096, 0.001)
    return VerifyReport(
        verdict="pass", confidence=Confidence(0.95, [4], 4, "asymptotic confidence sequence"), machine=machine_facts(),
        created="2026-12-04T00:00:00+00:00", command="harden verify x",
        deployment=DeploymentRecord("x", "model.fp32.onnx", "onnxruntime", "fp32", None, None,
                                    {"model.fp32.onnx": "a" * 64}, None, False, {"input": "image", "output": "logits"},
                                    "image → logits", None),
        twins=["graph"], class_names=["a", "b"], images=4, draws=1, eot=1, seeds={"attack": 0, "evaluation_draws": [0]},
        options={"seed": 0}, versions=versions(), harden_source={"commit": None, "dirty": None}, data=NO_DATA,
        evidence=None,
        clean={"engine": Scores(0.5, 0.8), "graph": Scores(0.5, 0.8)},
        parity=ParitySection({"graph": [parity]}, {"graph": parity}),
        divergence=DivergenceFigures(False, None, 0),
        rows=[AttackRow("engine", "fgsm", "graph", "white-box", 4 / 255, 0.5, 0.3, 1.5),
              AttackRow("graph", "fgsm", "graph", "white-box", 4 / 255, 0.5, 0.3)],
        worst_case=[WorstCaseAt(4 / 255, "4/255", Scores(0.3, 0.5), {"graph": None},
                                {"graph": Scores(0.3, 0.5)}, [ImageWorst(0.5, "fgsm[graph]:x")],
                                {"engine": [0.2, None], "clean": [0.5, None]})],
        audits=[Check("weights", "n/a", "no source")],
        engine_arithmetic=ArithmeticRecord("n/a", None, "compared by parity"), localisation=None, not_judged=[],
        checks=[Check("eps-zero", "pass", "ok")],
        gates=[GateRecord("survival[graph]@4/255", True, "pass", "ok", None, 0.9, None)], seconds={"evidence": 0.1},
    )  # fmt: skip


def test_a_report_writes_schema_valid_json_that_reads_back_equal() -> None:
    report = _report()
    written = json.loads(json.dumps(report.to_dict()))
    harden.schemas.validate(written)
    assert written["schema"] == SCHEMA
    again = VerifyReport.from_dict(written, "verify.json")
    assert again == report and again.to_dict() == written
    assert "seconds" not in written["rows"][1]  # a twin's row has no time, as before


def test_gate_names_read_as_structure() -> None:
    gate = GateRecord("survival[graph]@4/255", True, "pass", "", None, None, None)
    assert (gate.kind, gate.twin, gate.eps_text) == ("survival", "graph", "4/255")
    plain = GateRecord("engine-arithmetic", True, "pass", "", None, None, None)
    assert (plain.kind, plain.twin, plain.eps_text) == ("engine-arithmetic", None, None)
    assert _report().eps_of("4/255") == 4 / 255


def test_a_report_of_another_schema_or_with_a_wrong_field_is_refused(tmp_path: Path) -> None:
    written = _report().to_dict()
    with pytest.raises(InputError, match="harden-verify-report-v4"):
        VerifyReport.from_dict({**written, "schema": "harden-verify-report-v3"}, "verify.json")
    with pytest.raises(InputError, match="field 'images' must be an integer"):
        VerifyReport.from_dict({**written, "images": "4"}, "verify.json")
    (tmp_path / "verify.json").write_text("{")
    with pytest.raises(InputError, match="not a readable verify"):
        VerifyReport.read(tmp_path / "verify.json")
