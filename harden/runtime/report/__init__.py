"""Verification reports, each written atomically: JSON, JUnit XML and one self-contained HTML page.

- `verify.json` (schema `harden-verify-report-v4`): deployment and its sha256s, twins, seeds,
  tool versions, clean and robust scores on the engine and on each twin, parity, divergence,
  per-image worst cases, audits, sanity checks, gates and the verdict.
- `junit.xml`: one test case per gate (a failure carries the gate's detail), for CI systems.
- `report.html`: verdict, gates, robustness curves (engine vs twins), per-class IoU bars,
  twin-vs-engine parity, audits and checks, and the worst adversarial images as overlays; the
  plots are embedded as PNG so the page is one file.

One module per output, each taking what `summary.summarise` computed: `summary` (the JSON tree),
`junit`, `html_page` (the page) and `figures` (its plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harden._io import write_json
from harden.runtime.gates import GateResult
from harden.runtime.report.html_page import write_html
from harden.runtime.report.junit import write_junit
from harden.runtime.report.summary import summarise
from harden.runtime.verify_result import VerifyResult

__all__ = ["summarise", "write_html", "write_junit", "write_reports"]


def write_reports(
    result: VerifyResult, gates: list[GateResult], options: dict[str, Any], class_names: list[str],
    out: Path, palette: np.ndarray, command: str = "", confidence: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None, evidence: dict[str, Any] | None = None,
) -> list[Path]:  # fmt: skip
    """verify.json, junit.xml and report.html in `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    report = summarise(result, gates, options, class_names, command, confidence, data, evidence)
    write_json(out / "verify.json", report.to_dict())
    write_junit(report, out / "junit.xml")
    write_html(report, result, out / "report.html", palette)
    return [out / "verify.json", out / "junit.xml", out / "report.html"]
