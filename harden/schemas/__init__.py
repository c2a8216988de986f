"""JSON Schemas (draft 2020-12) of the reports harden writes, published with the package.

Each report names its schema in its `schema` field; `REPORT_SCHEMAS` maps that name to the file
here. A tool reading verify.json in a release pipeline can validate it with any JSON Schema
library, e.g. `jsonschema` (harden's tests validate every report they write with it):

    python -c "import harden.schemas as s, json, sys; s.validate(json.load(open(sys.argv[1])))" verify.json

A schema's version changes (…-v2) when a field is removed or changes meaning; new fields may
appear within a version.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

REPORT_SCHEMAS = {
    "harden-verify-report-v4": "verify.schema.json",
    "harden-replay-report-v1": "replay.schema.json",
    "harden-evidence-v1": "evidence.schema.json",
    "harden-attack-report-v1": "attack.schema.json",
    "harden-patch-attack-report-v1": "patch-attack.schema.json",
    "harden-eval-report-v1": "eval.schema.json",
}
SHARED = "common.schema.json"


@cache
def load(file_name: str) -> dict[str, Any]:
    """One schema file of this package, parsed."""
    return json.loads(resources.files(__name__).joinpath(file_name).read_text(encoding="utf-8"))


def validate(report: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `report` does not match the schema it names
    (ValueError when it names none of harden's). Needs the `jsonschema` package."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    name = report.get("schema") if isinstance(report, dict) else None
    if name not in REPORT_SCHEMAS:
        raise ValueError(f"not a harden report: its 'schema' is {name!r}; expected one of {', '.join(REPORT_SCHEMAS)}")
    schema = load(REPORT_SCHEMAS[name])
    shared = load(SHARED)
    registry: Registry = Registry().with_resource(shared["$id"], Resource.from_contents(shared))
    Draft202012Validator(schema, registry=registry).validate(report)
