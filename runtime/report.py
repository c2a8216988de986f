"""Verification reports, each written atomically: JSON, JUnit XML and one self-contained HTML page.

- `verify.json` (schema `harden-verify-report-v3`): deployment and its sha256s, twins, seeds,
  tool versions, clean and robust scores on the engine and on each twin, parity, divergence,
  per-image worst cases, audits, sanity checks, gates and the verdict.
- `junit.xml`: one test case per gate (a failure carries the gate's detail), for CI systems.
- `report.html`: verdict, gates, robustness curves (engine vs twins), per-class IoU bars,
  twin-vs-engine parity, audits and checks, and the worst adversarial images as overlays; the
  plots are embedded as PNG so the page is one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harden._io import atomic_open, write_json
from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.threat import format_eps
from harden.attacks.worst_case import ImageCounts, WorstCase
from harden.export.arithmetic import machine_facts
from harden.export.manifest import versions
from harden.runtime.gates import METHOD, GateResult, verdict_of
from harden.runtime.traceability import harden_source
from harden.runtime.verify import CHECKS_AND_AUDITS, ENGINE_INFERENCE, TWIN_INFERENCE, VerifyResult

SCHEMA = "harden-verify-report-v3"


def summarise(
    result: VerifyResult,
    gates: list[GateResult],
    options: dict[str, Any],
    class_names: list[str],
    command: str = "",
    confidence: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report (see the module docstring); `command`: the command line that asked for it;
    `confidence`: the level the gates decided at and, with --images auto, the looks taken;
    `data`: the images verified (`harden.runtime.traceability.data_record`); `evidence`: the
    evidence set's manifest and sha256 (None: --no-evidence)."""
    manifest = result.deployment.manifest
    eps_values = sorted({r.eps for r in result.engine.runs})
    engine_miou, engine_acc = result.engine.clean_scores()
    rows = []
    for run in result.engine.runs:
        worst = run.worst()
        rows.append({"side": "engine", "attack": run.attack, "crafted_on": run.crafted_on, "kind": run.kind,
                     "eps": run.eps, "pixel_accuracy": worst.pixel_accuracy, "miou": worst.miou,
                     "seconds": run.seconds})  # fmt: skip
    for twin, evaluation in result.twin_evaluations.items():
        for run in evaluation.runs:
            worst = run.worst()
            rows.append({"side": twin, "attack": run.attack, "crafted_on": twin, "kind": run.kind, "eps": run.eps,
                         "pixel_accuracy": worst.pixel_accuracy, "miou": worst.miou})  # fmt: skip
    worst_cases = []
    for eps in eps_values:
        engine = result.worst_at(eps)
        candidates = [
            f"{r.attack}[{r.crafted_on}]:{key}" for r in result.engine.runs if r.eps == eps for key in r.candidates
        ]
        twin_side = {t: _scores(result.twin_worst_at(t, eps)) for t in result.twins}
        worst_cases.append({
            "eps": eps, "eps_text": format_eps(eps), "engine": _scores(engine), "twins": twin_side,
            "per_image": [{"pixel_accuracy": float(a), "attack": candidates[int(c)]}
                          for a, c in zip(_per_image_accuracy(result, eps), engine.accuracy_choice, strict=True)],
            "per_class_iou": {"engine": _class_iou(result, eps, engine),
                              "clean": _clean_class_iou(result.engine.clean[0])},  # clean: draw 0
        })  # fmt: skip
    return {
        "schema": SCHEMA,
        "verdict": verdict_of(gates),
        "confidence": confidence or single_look(0.95, result.images),
        "machine": machine_facts(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "deployment": {
            "dir": str(result.deployment.root),
            "artefact": result.deployment.artefact.name,
            "engine": result.engine_name,
            "precision": result.deployment.precision,
            "model": manifest.model if manifest else None,
            "ram": manifest.ram if manifest else None,
            "files": result.deployment.file_hashes(),
            "checkpoint": manifest.raw.get("checkpoint") if manifest else None,
            "signed": result.deployment.signed,
            "interface": result.deployment.interface.to_dict(),
            "interface_text": result.deployment.interface.describe(),
            "reference": result.deployment.reference_file.name if result.deployment.reference_file else None,
        },
        "twins": result.twins,
        "class_names": class_names,
        "images": result.images,
        "draws": result.draws,
        "eot": result.eot,
        "seeds": {"attack": options.get("seed"), "evaluation_draws": [DRAW_SEED + d for d in range(result.draws)]},
        "options": options,
        "versions": versions(),
        "harden_source": harden_source(),
        "data": data or {"source": None, "num_classes": None, "images": [], "calibration": {"disjoint": None}},
        "evidence": evidence,
        "clean": {
            "engine": {"miou": engine_miou, "pixel_accuracy": engine_acc},
            **{
                t: dict(zip(("miou", "pixel_accuracy"), e.clean_scores(), strict=True))
                for t, e in result.twin_evaluations.items()
            },
        },
        "parity": {
            "clean": {t: [p.to_dict() for p in ps] for t, ps in result.clean_parity.items()},
            "adversarial": {t: p.to_dict() for t, p in result.adversarial_parity.items()},
        },
        "divergence": result.divergence,
        "rows": rows,
        "worst_case": worst_cases,
        "audits": [c.to_dict() for c in result.audits],
        "engine_arithmetic": result.engine_arithmetic,
        "localisation": result.localisation,
        "not_judged": result.not_judged,
        "checks": [c.to_dict() for c in result.checks],
        "gates": [g.to_dict() for g in gates],
        "seconds": result.seconds,
    }


def single_look(level: float, images: int) -> dict[str, Any]:
    """verify.json's `confidence` for a run judged once, on all its images."""
    return {"level": level, "per_look": level, "looks": [images], "images_used": images, "method": METHOD}


def _scores(worst: WorstCase | None) -> dict[str, float] | None:
    return None if worst is None else {"miou": worst.miou, "pixel_accuracy": worst.pixel_accuracy}


def _per_image_accuracy(result: VerifyResult, eps: float) -> np.ndarray:
    return np.stack([c.accuracy_per_image() for c in result.engine_candidates_at(eps)]).min(0)


def _class_iou(result: VerifyResult, eps: float, worst: WorstCase) -> list[float | None]:
    """Per-class IoU of the engine under the worst-case mIoU assignment `worst` at ε."""
    candidates, choice = result.engine_candidates_at(eps), worst.miou_choice
    rows = np.arange(len(choice))
    tp, fp, fn = (np.stack([getattr(c, k) for c in candidates])[choice, rows].sum(0) for k in ("tp", "fp", "fn"))
    return _iou(tp, fp, fn)


def _clean_class_iou(counts: ImageCounts) -> list[float | None]:
    return _iou(counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0))


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float | None]:
    union = tp + fp + fn
    return [float(t / u) if u else None for t, u in zip(tp, union, strict=True)]


# -- JUnit XML ----------------------------------------------------------------------------------


def write_junit(summary: dict[str, Any], path: Path) -> None:
    """One <testcase> per gate inside one <testsuite>, as Jenkins/GitLab/GitHub readers expect."""
    gates = summary["gates"]
    failures = sum(not g["passed"] for g in gates)
    suites = ET.Element("testsuites", name="harden verify", tests=str(len(gates)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"harden verify {summary['deployment']['artefact']}",
        tests=str(len(gates)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{sum(summary['seconds'].values()):.3f}",
    )
    for gate in gates:
        case = ET.SubElement(suite, "testcase", classname="harden.verify.gates", name=gate["name"],
                             time=f"{gate_seconds(summary, gate['name']):.3f}")  # fmt: skip
        if not gate["passed"]:  # an inconclusive gate fails closed, under its own type
            kind = "GateInconclusive" if gate["outcome"] == "inconclusive" else "GateFailed"
            failure = ET.SubElement(case, "failure", message=gate["detail"][:500], type=kind)
            failure.text = gate["detail"]
        else:
            ET.SubElement(case, "system-out").text = gate["detail"]
    ET.indent(suites)
    with atomic_open(path, "wb") as f:
        ET.ElementTree(suites).write(f, encoding="utf-8", xml_declaration=True)


def gate_seconds(summary: dict[str, Any], gate: str) -> float:
    """The time spent producing a gate's evidence, for junit's `time`: the engine-side attack
    runs at its ε for survival and robust-mIoU gates, the checks' own attacks for the sanity
    checks, the clean passes (engine and twins, shared by all twins) for the parity gates; 0 for
    gates that only read what others measured (data, audits)."""
    seconds = summary["seconds"]
    if gate.startswith(("survival", "robust-miou")):
        eps_text = gate.rsplit("@", 1)[-1]
        eps = next((w["eps"] for w in summary["worst_case"] if w["eps_text"] == eps_text), None)
        runs = [r["seconds"] for r in summary["rows"] if r["side"] == "engine" and r["eps"] == eps and "seconds" in r]
        return float(sum(runs)) / (len(summary["twins"]) if gate.startswith("survival") else 1)
    if gate == "sanity-checks":
        return float(seconds.get(CHECKS_AND_AUDITS, 0.0))
    if gate.startswith(("clean-agreement", "clean-miou-delta")):
        clean_passes = seconds.get(ENGINE_INFERENCE, 0.0) + seconds.get(TWIN_INFERENCE, 0.0)
        return clean_passes / max(1, 2 * len(summary["twins"]))
    return 0.0


# -- HTML ---------------------------------------------------------------------------------------


def write_html(summary: dict[str, Any], result: VerifyResult, path: Path, palette: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")

    verdict = summary["verdict"]
    gates = summary["gates"]
    failed = [g for g in gates if g["outcome"] == "fail"]
    undecided = [g for g in gates if g["outcome"] == "inconclusive"]
    ordered = failed + undecided + [g for g in gates if g["passed"]]  # a reader looks for what failed first
    heading = (f"Gates: {len(failed)} of {len(gates)} failed" if failed else f"Gates: all {len(gates)} passed"
               if not undecided else f"Gates: none failed, {len(undecided)} of {len(gates)} inconclusive")  # fmt: skip
    if failed and undecided:
        heading += f", {len(undecided)} inconclusive"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>harden verify: {html.escape(summary['deployment']['artefact'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:90%}.pass{background:#d8f5d8}"
        ".fail{background:#f8d0d0}.inconclusive{background:#fbe7b5}.na{background:#eee}"
        "h1 span{padding:2px 12px;border-radius:6px}"
        ".meta{color:#555;font-size:85%}code{background:#f4f4f4;padding:1px 4px}</style></head><body>",
        f"<h1>harden verify — <span class='{verdict}'>{verdict.upper()}</span></h1>",
        f"<p><b>{html.escape(verdict_meaning(summary))}</b></p>",
        _header(summary),
        "<h2>Headline: clean → worst case, engine vs reference</h2>",
        _headline_table(summary),
        *_not_judged(summary["not_judged"]),
        f"<h2>{html.escape(heading)}</h2>",
        f"<p class='meta'>{html.escape(_confidence_text(summary))}</p>",
        _table(
            ["gate", "result", "estimate [interval]", "gate", "detail"],
            [(g["name"], _status(g), _interval_text(g), _threshold_text(g), g["detail"]) for g in ordered],
        ),
        "<h2>Robustness: engine vs twins</h2>",
        _img(_curves(summary)),
        "<h2>Per-class IoU</h2>",
        _img(_class_bars(summary)),
        "<h2>Twin vs engine</h2>",
        _parity_table(summary),
        *_localisation(summary["localisation"]),
        "<h2>Engine arithmetic: this engine on this hardware vs the file as written</h2>",
        _arithmetic_table(summary["engine_arithmetic"]),
        "<h2>Deployment audits</h2>",
        _table(["audit", "status", "detail"], [(c["name"], c["status"], c["detail"]) for c in summary["audits"]]),
        "<h2>Sanity checks (docs/design.md §6)</h2>",
        _table(["check", "status", "detail"], [(c["name"], c["status"], c["detail"]) for c in summary["checks"]]),
        "<h2>Deployment</h2>",
        _deployment_table(summary),
        "<h2>Adversarial images on the engine</h2>",
        _overlay_caption(summary, result),
        _img(_overlays(summary, result, palette)),
        "</body></html>",
    ]
    with atomic_open(path, "w") as f:
        f.write("\n".join(parts))


def _status(gate: dict[str, Any]) -> str:
    return str(gate["outcome"])


def _interval_text(gate: dict[str, Any]) -> str:
    interval = gate["interval"]
    if interval is None:
        return "exact"
    if interval["low"] is None or interval["high"] is None or interval["point"] is None:
        return "no estimate"
    return f"{interval['point']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"


def _threshold_text(gate: dict[str, Any]) -> str:
    return "" if gate["threshold"] is None else f"{gate['threshold']:.4g}"


def _confidence_text(summary: dict[str, Any]) -> str:
    c = summary["confidence"]
    text = (f"Each gate on a sampled figure decides from its {c['level']:.0%} interval ({c['method']}): pass when the "
            "interval clears the gate, fail when it misses it, inconclusive (fails closed) when it straddles it. "
            f"{c['images_used']} images")  # fmt: skip
    if len(c["looks"]) > 1 or c["per_look"] != c["level"]:
        looks = ", ".join(str(n) for n in c["looks"])
        text += (f"; --images auto looked at {looks} images, each look at {c['per_look']:.4g} so that the whole "
                 "sequence keeps the stated error rate")  # fmt: skip
    return text + "."


def verdict_meaning(summary: dict[str, Any]) -> str:
    """What the verdict says, and what it does not: PASS is about the deployment, not the model."""
    gates = summary["gates"]
    failed = sum(g["outcome"] == "fail" for g in gates)
    undecided = sum(g["outcome"] == "inconclusive" for g in gates)
    if summary["verdict"] == "fail":
        return (f"FAIL: {failed} of {len(gates)} gates failed (listed first below). The deployment does not "
                "preserve the robustness of its reference, or could not be verified.")  # fmt: skip
    if summary["verdict"] == "inconclusive":
        more = [g["more_images"] for g in gates if g["outcome"] == "inconclusive"]
        most = max((m for m in more if m is not None), default=0)
        hint = f" About {most} more image{'s' if most != 1 else ''} would decide." if more and None not in more else ""
        return (f"INCONCLUSIVE: no gate failed, but {undecided} of {len(gates)} could not decide at "
                f"{summary['confidence']['level']:.0%} confidence (listed first below); the release does not "
                f"pass.{hint} Run with more --images, or --images auto.")  # fmt: skip
    text = ("PASS: the deployed engine preserves the robustness of its reference (every gate passed). "
            "It does not say the model is robust")  # fmt: skip
    last = summary["worst_case"][-1] if summary["worst_case"] else None
    if last is not None and last["engine"] is not None:
        text += (f": its worst-case mIoU falls from {summary['clean']['engine']['miou']:.3f} clean to "
                 f"{last['engine']['miou']:.3f} at ε = {last['eps_text']}")  # fmt: skip
    floor = summary["options"].get("gates", {}).get("min_robust_miou", 0.0)
    if not floor:
        text += ". No robust-mIoU floor was set (--gate min_robust_miou=VALUE sets one)"
    return text + "."


def _header(summary: dict[str, Any]) -> str:
    v = summary["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("harden", "torch", "onnxruntime", "tensorrt") if v.get(k))
    lines = [
        f"{html.escape(summary.get('created', ''))} · {html.escape(versions)}",
        f"<code>{html.escape(summary.get('command', ''))}</code>",
        f"{html.escape(summary['deployment']['artefact'])} ({summary['deployment']['precision']}, "
        f"{html.escape(summary['deployment']['engine'])}) · model {html.escape(str(summary['deployment']['model']))} · "
        f"{html.escape(ram_in_words(summary['deployment']['ram']))}",
        f"{summary['images']} images · {summary['draws']} RAD draw(s) · EOT {summary['eot']} · "
        "<a href='verify.json'>verify.json</a> · <a href='junit.xml'>junit.xml</a>",
    ]
    return "<p class='meta'>" + "<br>".join(lines) + "</p>"


def ram_in_words(ram: dict[str, Any] | None) -> str:
    """RAM settings as a sentence (the header), not a Python dict."""
    if not ram:
        return "no Robust Attention Mechanism recorded"
    parts = []
    if ram.get("mas"):
        parts.append(f"MAS caps every attention weight at {ram.get('threshold')}")
    if ram.get("rad"):
        parts.append(f"RAD drops attention weights with p = {ram.get('drop_p')} at inference (attacked with EOT)")
    if ram.get("temperature") is not None:
        parts.append(f"attention logits divided by {ram['temperature']}")
    if ram.get("learnable"):
        parts.append("a learnable attention scale per layer")
    return "RAM: " + ("; ".join(parts) if parts else "present but every part off")


def _headline_table(summary: dict[str, Any]) -> str:
    """Clean and worst-case mIoU / pAcc per ε on the engine and each twin, and the survival ratio."""
    twins = summary["twins"]
    header = ["ε", "engine mIoU", "engine pAcc"]
    for twin in twins:
        header += [f"{twin} mIoU", f"{twin} pAcc", f"survival vs {twin} (engine / twin mIoU)"]

    def cells(engine: dict[str, float] | None, twin_scores: dict[str, dict[str, float] | None]) -> list[str]:
        row = [_fmt(engine, "miou"), _fmt(engine, "pixel_accuracy")]
        for twin in twins:
            other = twin_scores.get(twin)
            ratio = (engine["miou"] / other["miou"]) if engine and other and other["miou"] else None
            row += [_fmt(other, "miou"), _fmt(other, "pixel_accuracy"), "—" if ratio is None else f"{ratio:.3f}"]
        return row

    rows = [("clean", *cells(summary["clean"]["engine"], {t: summary["clean"].get(t) for t in twins}))]
    rows += [(w["eps_text"], *cells(w["engine"], w["twins"])) for w in summary["worst_case"]]
    return _table(header, rows)


def _fmt(scores: dict[str, Any] | None, key: str) -> str:
    value = None if scores is None else scores.get(key)
    return "—" if value is None else f"{value:.4f}"


def _not_judged(blind: list[str]) -> list[str]:
    if not blind:
        return []
    items = "".join(f"<li>{html.escape(line)}</li>" for line in blind)
    return [f"<h2>What this verdict could not judge</h2><ul class='na'>{items}</ul>"]


def _localisation(found: dict[str, Any] | None) -> list[str]:
    """The first diverging node, when a parity gate failed: what turns FAIL into a bug report."""
    if found is None:
        return []
    rows = [("first diverging node", "fail", found["detail"])]
    return ["<h2>Where the engine diverges from its graph twin</h2>", _table(["", "status", "detail"], rows)]


def _arithmetic_table(arithmetic: dict[str, Any]) -> str:
    """Figures, then the cause and remedy when the engine's kernels differ from the file."""
    if arithmetic["status"] == "n/a":
        return _table(["audit", "status", "detail"], [("engine-arithmetic", "n/a", arithmetic["detail"])])
    c = arithmetic["comparison"]
    rows: list[tuple[Any, ...]] = [
        (
            "argmax agreement",
            arithmetic["status"],
            f"{c['argmax_agreement']:.4%} (gate ≥ {arithmetic['min_agreement']:.2%})",
        ),
        ("max |Δlogit|", "", f"{c['max_abs_diff']:.3g}"),
        ("mIoU as written → deployed", "", f"{c['miou_as_written']:.4f} → {c['miou_deployed']:.4f}"),
        ("engine, CPU", "", f"{arithmetic['engine']}; {arithmetic['cpu']}"),
        (
            "int8 weights beyond ±64",
            "",
            f"{arithmetic['int8_weights_beyond_bound']} of {arithmetic['int8_weight_tensors']}",
        ),
    ]
    if arithmetic["cause"]:
        rows += [("cause", "fail", arithmetic["cause"]), ("remedy", "", arithmetic["remedy"])]
    return _table(["", "status", "value"], rows)


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        status = str(row[1]) if len(row) > 1 else ""
        css = {"pass": "pass", "fail": "fail", "n/a": "na", "inconclusive": "inconclusive"}.get(status, "")
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr class='{css}'>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _deployment_table(summary: dict[str, Any]) -> str:
    d = summary["deployment"]
    rows = [("directory", d["dir"]), ("artefact", d["artefact"]), ("engine", d["engine"]),
            ("precision", d["precision"]), ("model", d["model"] or "not recorded"), ("RAM", ram_in_words(d["ram"])),
            ("twins", ", ".join(summary["twins"])), ("images", summary["images"]),
            ("RAD draws / EOT", f"{summary['draws']} / {summary['eot']}")]  # fmt: skip
    if not d.get("signed", True):
        rows.insert(0, ("signature", "unsigned: no manifest (a bare ONNX file; provenance not recorded)"))
        rows.append(("interface", d["interface_text"]))
        rows.append(("reference", d["reference"] or "none (survival judged against the deployed graph's own twin)"))
    rows += [(f"sha256 {name}", digest) for name, digest in d["files"].items()]
    return _table(["", ""], rows)


def _parity_table(summary: dict[str, Any]) -> str:
    rows = []
    for twin, parities in summary["parity"]["clean"].items():
        # each figure is its own worst over the RAD draws, exactly as the gates judge it
        agreement = min(p["agreement"] for p in parities)
        max_abs = max(p["max_abs_diff"] for p in parities)
        miou_delta = max(p["miou_delta"] for p in parities)
        adversarial = summary["parity"]["adversarial"][twin]
        rows.append((twin, f"{agreement:.4%}", f"{max_abs:.3g}", f"{miou_delta:.4f}",
                     f"{adversarial['agreement']:.4%}", f"{adversarial['max_abs_diff']:.3g}"))  # fmt: skip
    div = summary["divergence"]
    note = (
        f"<p>Divergence search: the engine agrees with the fp32 reference on {div['agreement_with_reference']:.4%} "
        "of pixels of the images it produced.</p>"
        if div["ran"]
        else "<p>Divergence search: not run (the deployed graph is the reference itself).</p>"
    )
    header = ["twin", "clean agreement", "clean max |Δlogit|", "clean |ΔmIoU|", "adv. agreement", "adv. max |Δlogit|"]
    return (
        "<p>Each figure is its worst over the RAD draws (the gates use the same numbers).</p>"
        + _table(header, rows)
        + note
    )


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    return f"<img style='max-width:100%' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _curves(summary: dict[str, Any]) -> bytes:
    """Worst-case mIoU and pAcc against ε: the engine and every twin, each line with its own marker
    and a small horizontal offset, so a twin that coincides with the engine stays visible."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    worst = summary["worst_case"]
    eps = np.array([0.0] + [w["eps"] * 255 for w in worst])
    shift = 0.04 * max(float(eps.max()), 1.0)
    styles = [("s", "--"), ("^", ":"), ("D", "-.")]
    for ax, key, label in zip(axes, ("miou", "pixel_accuracy"), ("worst-case mIoU", "worst-case pixel accuracy"),
                              strict=True):  # fmt: skip
        ax.plot(eps, [summary["clean"]["engine"][key]] + [(w["engine"] or {}).get(key, np.nan) for w in worst],
                "o-", lw=2.5, ms=7, color="black", label="engine (all attacks)", zorder=3)  # fmt: skip
        for n, twin in enumerate(summary["twins"]):
            marker, line = styles[n % len(styles)]
            values = [summary["clean"][twin][key]] + [(w["twins"][twin] or {}).get(key, np.nan) for w in worst]
            ax.plot(eps + (n + 1) * shift, values, marker=marker, ls=line, ms=6, mfc="none", zorder=4,
                    label=f"{twin} twin (its own attacks)")  # fmt: skip
        ax.set_xlabel("ε (grey levels of 255); twins drawn slightly to the right")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs ε")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _class_bars(summary: dict[str, Any]) -> bytes:
    """Per-class IoU clean and at the largest ε; a class with no pixel in the labels or the
    predictions has no IoU and is marked "absent" instead of drawn as 0."""
    import matplotlib.pyplot as plt

    last = summary["worst_case"][-1]
    names = summary["class_names"] or [str(i) for i in range(len(last["per_class_iou"]["clean"]))]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.8))
    for offset, key, label in (
        (-0.2, "clean", "engine, clean"),
        (0.2, "engine", f"engine, worst case ε={last['eps_text']}"),
    ):
        values = [np.nan if v is None else v for v in last["per_class_iou"][key]]
        ax.bar(x + offset, values, width=0.4, label=label)
    absent = [i for i in x if last["per_class_iou"]["clean"][i] is None and last["per_class_iou"]["engine"][i] is None]
    for i in absent:
        ax.text(float(i), 0.02, "absent", rotation=90, ha="center", va="bottom", fontsize=7, color="#777")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU" + (" (absent: no pixel of the class in these images)" if absent else ""))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _worst_rows(summary: dict[str, Any], result: VerifyResult) -> list[tuple[int, float | None, str]]:
    """(image id, pAcc, attack) of each image shown: its lowest pAcc over attacks and draws at
    the largest ε, and the attack (and its member) that reached it."""
    eps = max(r.eps for r in result.engine.runs)
    worst = next(w for w in summary["worst_case"] if w["eps"] == eps)
    ids = result.engine.examples[f"worst-ids@{eps}"].tolist()
    return [(int(i), worst["per_image"][int(i)]["pixel_accuracy"], worst["per_image"][int(i)]["attack"]) for i in ids]


def _overlay_caption(summary: dict[str, Any], result: VerifyResult) -> str:
    eps = max(r.eps for r in result.engine.runs)
    rows = [(f"row {n + 1}", f"image {i}", "—" if acc is None else f"{acc:.3f}", attack)
            for n, (i, acc, attack) in enumerate(_worst_rows(summary, result))]  # fmt: skip
    return (
        f"<p>The {len(rows)} images with the lowest engine pixel accuracy at ε = {format_eps(eps)}, over every attack "
        "and RAD draw (the engine's prediction is from the draw that reached it):</p>"
        + _table(["", "image (dataset index)", "lowest pAcc", "attack[crafted on]:member@draw"], rows)
    )


def _overlays(summary: dict[str, Any], result: VerifyResult, palette: np.ndarray) -> bytes:
    """Rows: clean image | engine on clean | worst adversarial (largest ε) | engine on it | labels,
    with a class-colour legend."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from harden.visualize import colorize, panel_figure

    examples, predictions = result.engine.examples, result.example_predictions
    eps = max(r.eps for r in result.engine.runs)
    images, labels = examples[f"worst-clean@{eps}"], examples[f"worst-labels@{eps}"]
    adversarial = examples[f"worst-adversarial@{eps}"]
    titles = ("clean image", "engine, clean", f"adversarial ε={format_eps(eps)}", "engine, adversarial", "labels")
    rows = [
        (images[i].permute(1, 2, 0).numpy(), colorize(predictions["clean"][i], palette),
         adversarial[i].permute(1, 2, 0).numpy(), colorize(predictions["adversarial"][i], palette),
         colorize(labels[i], palette))
        for i in range(len(images))
    ]  # fmt: skip
    png = _png(panel_figure(rows, titles, width=14))
    names = summary["class_names"] or [str(c) for c in range(len(palette))]
    shown = sorted({int(c) for t in (labels, predictions["clean"], predictions["adversarial"]) for c in t.unique()
                    if 0 <= int(c) < len(names)})  # fmt: skip
    fig = plt.figure(figsize=(14, 0.35 + 0.3 * math.ceil(len(shown) / 6)))
    handles = [Patch(color="#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[c][:3])), label=names[c])
               for c in shown]  # fmt: skip
    fig.legend(handles=handles, loc="center", ncol=6, fontsize=9, frameon=False, title="classes in these images")
    return _stack(png, _png(fig))


def _stack(*pngs: bytes) -> bytes:
    """PNGs one above the other, as one PNG (one <img> keeps the page a single file)."""
    from PIL import Image

    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_reports(
    result: VerifyResult, gates: list[GateResult], options: dict[str, Any], class_names: list[str],
    out: Path, palette: np.ndarray, command: str = "", confidence: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None, evidence: dict[str, Any] | None = None,
) -> list[Path]:  # fmt: skip
    """verify.json, junit.xml and report.html in `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(result, gates, options, class_names, command, confidence, data, evidence)
    write_json(out / "verify.json", summary)
    write_junit(summary, out / "junit.xml")
    write_html(summary, result, out / "report.html", palette)
    return [out / "verify.json", out / "junit.xml", out / "report.html"]
