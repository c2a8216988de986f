"""`junit.xml`: one test case per gate, for CI systems."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harden._io import atomic_open
from harden.runtime.report.record import GateRecord, VerifyReport
from harden.runtime.verify_result import CHECKS_AND_AUDITS, ENGINE_INFERENCE, TWIN_INFERENCE


def write_junit(report: VerifyReport, path: Path) -> None:
    """One <testcase> per gate inside one <testsuite>, as Jenkins/GitLab/GitHub readers expect."""
    gates = report.gates
    failures = sum(not g.passed for g in gates)
    suites = ET.Element("testsuites", name="harden verify", tests=str(len(gates)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"harden verify {report.deployment.artefact}",
        tests=str(len(gates)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{sum(report.seconds.values()):.3f}",
    )
    for gate in gates:
        case = ET.SubElement(suite, "testcase", classname="harden.verify.gates", name=gate.name,
                             time=f"{gate_seconds(report, gate):.3f}")  # fmt: skip
        if not gate.passed:  # an inconclusive gate fails closed, under its own type
            kind = "GateInconclusive" if gate.outcome == "inconclusive" else "GateFailed"
            failure = ET.SubElement(case, "failure", message=gate.detail[:500], type=kind)
            failure.text = gate.detail
        else:
            ET.SubElement(case, "system-out").text = gate.detail
    ET.indent(suites)
    with atomic_open(path, "wb") as f:
        ET.ElementTree(suites).write(f, encoding="utf-8", xml_declaration=True)


def gate_seconds(report: VerifyReport, gate: GateRecord) -> float:
    """The time spent producing a gate's evidence, for junit's `time`: the engine-side attack
    runs at its ε for survival and robust-mIoU gates, the checks' own attacks for the sanity
    checks, the clean passes (engine and twins, shared by all twins) for the parity gates; 0 for
    gates that only read what others measured (data, audits)."""
    seconds = report.seconds
    if gate.kind in ("survival", "robust-miou"):
        eps = report.eps_of(gate.eps_text or "")
        runs = [r.seconds for r in report.rows if r.side == "engine" and r.eps == eps and r.seconds is not None]
        return float(sum(runs)) / (len(report.twins) if gate.kind == "survival" else 1)
    if gate.kind == "sanity-checks":
        return float(seconds.get(CHECKS_AND_AUDITS, 0.0))
    if gate.kind in ("clean-agreement", "clean-miou-delta"):
        clean_passes = seconds.get(ENGINE_INFERENCE, 0.0) + seconds.get(TWIN_INFERENCE, 0.0)
        return clean_passes / max(1, 2 * len(report.twins))
    return 0.0
