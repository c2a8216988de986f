"""What `harden replay` writes: replay.json (schema `harden-replay-report-v1`, verify.json's
traceability fields), junit.xml (one test case per gate) and a one-screen replay.html."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harden._io import atomic_open, write_json
from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.threat import format_eps
from harden.export.arithmetic import machine_facts
from harden.export.files import versions
from harden.runtime.confidence import METHOD
from harden.runtime.gates import GateResult, verdict_of
from harden.runtime.replay import ReplayResult
from harden.runtime.traceability import harden_source

SCHEMA = "harden-replay-report-v1"


def summarise(result: ReplayResult, gates: list[GateResult], settings: dict[str, Any], command: str,
              confidence: float) -> dict[str, Any]:  # fmt: skip
    evidence, deployment = result.evidence, result.deployment
    per_image_forward = result.seconds["engine_inference"] / max(result.forwards, 1)
    return {
        "schema": SCHEMA,
        "verdict": verdict_of(gates),
        "confidence": {
            "level": confidence,
            "method": f"as harden verify: {METHOD}",
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_facts(),
        "versions": versions(),
        "harden_source": harden_source(),
        "evidence": {
            "dir": str(evidence.folder),
            "manifest_sha256": evidence.sha256,
            "recorded": evidence.manifest["deployment"],
            "images": result.images,
            "draws": result.draws,
            "draw_seeds": [DRAW_SEED + d for d in range(result.draws)],
            "eps": evidence.eps_values,
        },
        "deployment": {
            "dir": str(deployment.root),
            "artefact": deployment.artefact.name,
            "engine": result.engine_name,
            "precision": deployment.precision,
            "files": deployment.file_hashes(),
            "signed": deployment.signed,
        },
        "data": evidence.manifest["data"],
        "clean": {**result.clean.scores(), "agreement": result.clean.agreement_point()},
        "eps": [
            {"eps": eps, "eps_text": format_eps(eps), **side.scores(), "agreement": side.agreement_point()}
            for eps, side in result.adversarial.items()
        ],
        "settings": settings,
        "gates": [g.to_dict() for g in gates],
        "engine_forwards": result.forwards,
        "seconds": {**result.seconds, "per_image_forward": per_image_forward},
    }


def write_replay_reports(summary: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "replay.json", summary)
    _write_junit(summary, out / "junit.xml")
    _write_html(summary, out / "replay.html")
    return [out / "replay.json", out / "junit.xml", out / "replay.html"]


def _write_junit(summary: dict[str, Any], path: Path) -> None:
    gates = summary["gates"]
    failures = sum(not g["passed"] for g in gates)
    suites = ET.Element("testsuites", name="harden replay", tests=str(len(gates)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name=f"harden replay {summary['deployment']['artefact']}",
                          tests=str(len(gates)), failures=str(failures), errors="0", skipped="0",
                          time=f"{summary['seconds']['total']:.3f}")  # fmt: skip
    for gate in gates:
        case = ET.SubElement(suite, "testcase", classname="harden.replay.gates", name=gate["name"], time="0")
        if gate["passed"]:
            ET.SubElement(case, "system-out").text = gate["detail"]
            continue
        kind = "GateInconclusive" if gate["outcome"] == "inconclusive" else "GateFailed"
        failure = ET.SubElement(case, "failure", message=gate["detail"][:500], type=kind)
        failure.text = gate["detail"]
    ET.indent(suites)
    with atomic_open(path, "wb") as f:
        ET.ElementTree(suites).write(f, encoding="utf-8", xml_declaration=True)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.pass{color:#176317;font-weight:bold}.fail{color:#b00020;font-weight:bold}.inconclusive{color:#a15c00;font-weight:bold}
.verdict{font-size:1.6em}.small{color:#666;font-size:.9em}"""


def _write_html(summary: dict[str, Any], path: Path) -> None:
    e = html.escape
    verdict = summary["verdict"]
    recorded, deployed = summary["evidence"]["recorded"], summary["deployment"]
    rows = [("clean", summary["clean"])] + [(f"ε = {x['eps_text']}", x) for x in summary["eps"]]
    figures = "".join(
        f"<tr><td>{e(name)}</td><td>{x['recorded']['miou']:.4f}</td><td>{x['replayed']['miou']:.4f}</td>"
        f"<td>{x['recorded']['pixel_accuracy']:.4f}</td><td>{x['replayed']['pixel_accuracy']:.4f}</td>"
        f"<td>{x['agreement']:.4%}</td></tr>"
        for name, x in rows
    )
    gates = "".join(
        f"<tr><td class='{g['outcome']}'>{e(g['outcome'])}</td><td>{e(g['name'])}</td><td>{e(g['detail'])}</td></tr>"
        for g in summary["gates"]
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>harden replay: {e(verdict)}</title>
<style>{_STYLE}</style></head><body>
<h1>harden replay — <span class="verdict {e(verdict)}">{e(verdict.upper())}</span></h1>
<p><b>{e(deployed["artefact"])}</b> ({e(deployed["precision"])}, {e(deployed["engine"])})
re-judged on the evidence of <b>{e(recorded["artefact"])}</b> ({e(recorded["precision"])}, {e(recorded["engine"])}):
{summary["evidence"]["images"]} images × {summary["evidence"]["draws"]} RAD draw(s), clean and the worst adversarial
image at each ε, in {summary["seconds"]["total"]:.1f} s ({summary["engine_forwards"]} engine predictions).</p>
<h2>Gates</h2><table><tr><th>outcome</th><th>gate</th><th>detail</th></tr>{gates}</table>
<h2>Worst case on the evidence images</h2>
<table><tr><th></th><th>mIoU recorded</th><th>mIoU replayed</th><th>pAcc recorded</th><th>pAcc replayed</th>
<th>agreement (worst draw)</th></tr>{figures}</table>
<p class="small">evidence {e(summary["evidence"]["dir"])} (manifest sha256 {e(summary["evidence"]["manifest_sha256"])});
created {e(summary["created"])}; command: <code>{e(summary["command"])}</code></p>
</body></html>"""
    with atomic_open(path, "w") as f:
        f.write(page)
