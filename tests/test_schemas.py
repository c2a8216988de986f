"""The published JSON Schemas: well-formed, shipped, and strict enough to catch a broken report.
(Every report the other tests write is validated in conftest's teardown.)"""

import copy
import json

import jsonschema
import pytest

import harden.schemas as schemas
from harden._io import write_json

EVAL = {
    "schema": "harden-eval-report-v1", "run_dir": "runs/seg", "model": "pspnet_tiny", "data": "synthetic",
    "split": "val", "images": 4, "miou": 0.5, "pixel_accuracy": 0.8, "pixels": 1000,
    "per_class_iou": {"road": 0.9, "truck": None},
}  # fmt: skip


@pytest.mark.parametrize("name", [*schemas.REPORT_SCHEMAS.values(), schemas.SHARED])
def test_every_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas.load(name))


def test_a_valid_report_passes_and_broken_ones_fail() -> None:
    schemas.validate(EVAL)
    for broken in ({"miou": 1.5}, {"miou": "0.5"}, {"images": 0}, {"per_class_iou": {"road": -0.1}}):
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate({**EVAL, **broken})
    missing = copy.deepcopy(EVAL)
    del missing["pixel_accuracy"]
    with pytest.raises(jsonschema.ValidationError, match="pixel_accuracy"):
        schemas.validate(missing)


def test_a_report_of_no_known_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="not a harden report"):
        schemas.validate({**EVAL, "schema": "harden-eval-report-v0"})


def test_reports_are_standard_json_with_null_for_undefined_scores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """NaN (an IoU ratio when clean mIoU is 0) is written as null, which the schemas allow."""
    path = tmp_path / "eval.json"
    write_json(path, {**EVAL, "miou": float("nan"), "per_class_iou": {"road": float("inf")}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert report["miou"] is None and report["per_class_iou"]["road"] is None
    schemas.validate(report)
