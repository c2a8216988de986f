"""Verification reports, each written atomically: JSON, JUnit XML and one self-contained HTML page.

- `verify.json` (schema `harden-verify-report-v1`): deployment and its sha256s, twins, seeds,
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
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from harden._io import atomic_open, write_json
from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.threat import format_eps
from harden.attacks.worst_case import ImageCounts, WorstCase
from harden.export.manifest import versions
from harden.runtime.gates import GateResult
from harden.runtime.verify import VerifyResult

SCHEMA = "harden-verify-report-v1"


def summarise(
    result: VerifyResult, gates: list[GateResult], options: dict[str, Any], class_names: list[str]
) -> dict[str, Any]:
    """The JSON report (see the module docstring)."""
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
    passed = bool(gates) and all(g.passed for g in gates)
    return {
        "schema": SCHEMA,
        "verdict": "pass" if passed else "fail",
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


def _scores(worst: WorstCase | None) -> dict[str, float] | None:
    return None if worst is None else {"miou": worst.miou, "pixel_accuracy": worst.pixel_accuracy}


def _candidates(result: VerifyResult, eps: float) -> list[ImageCounts]:
    return [c for r in result.engine.runs if r.eps == eps for c in r.candidates.values()]


def _per_image_accuracy(result: VerifyResult, eps: float) -> np.ndarray:
    return np.stack([c.accuracy_per_image() for c in _candidates(result, eps)]).min(0)


def _class_iou(result: VerifyResult, eps: float, worst: WorstCase) -> list[float | None]:
    """Per-class IoU of the engine under the worst-case mIoU assignment `worst` at ε."""
    candidates, choice = _candidates(result, eps), worst.miou_choice
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
        case = ET.SubElement(suite, "testcase", classname="harden.verify.gates", name=gate["name"], time="0")
        if not gate["passed"]:
            failure = ET.SubElement(case, "failure", message=gate["detail"][:500], type="GateFailed")
            failure.text = gate["detail"]
        else:
            ET.SubElement(case, "system-out").text = gate["detail"]
    ET.indent(suites)
    with atomic_open(path, "wb") as f:
        ET.ElementTree(suites).write(f, encoding="utf-8", xml_declaration=True)


# -- HTML ---------------------------------------------------------------------------------------


def write_html(summary: dict[str, Any], result: VerifyResult, path: Path, palette: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")

    verdict = summary["verdict"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>harden verify: {html.escape(summary['deployment']['artefact'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:90%}.pass{background:#d8f5d8}"
        ".fail{background:#f8d0d0}.na{background:#eee}h1 span{padding:2px 12px;border-radius:6px}</style></head><body>",
        f"<h1>harden verify — <span class='{verdict}'>{verdict.upper()}</span></h1>",
        _deployment_table(summary),
        *_not_judged(summary["not_judged"]),
        "<h2>Gates</h2>",
        _table(
            ["gate", "result", "detail"],
            [(g["name"], "pass" if g["passed"] else "fail", g["detail"]) for g in summary["gates"]],
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
        "<h2>Sanity checks (DESIGN.md §6)</h2>",
        _table(["check", "status", "detail"], [(c["name"], c["status"], c["detail"]) for c in summary["checks"]]),
        "<h2>Worst adversarial images on the engine</h2>",
        _img(_overlays(result, palette)),
        "</body></html>",
    ]
    with atomic_open(path, "w") as f:
        f.write("\n".join(parts))


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
        css = {"pass": "pass", "fail": "fail", "n/a": "na"}.get(status, "")
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr class='{css}'>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _deployment_table(summary: dict[str, Any]) -> str:
    d = summary["deployment"]
    rows = [("directory", d["dir"]), ("artefact", d["artefact"]), ("engine", d["engine"]),
            ("precision", d["precision"]), ("model", d["model"] or "not recorded"), ("RAM", d["ram"] or "not recorded"),
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
        worst = min(parities, key=lambda p: p["agreement"])
        adversarial = summary["parity"]["adversarial"][twin]
        rows.append((twin, f"{worst['agreement']:.4%}", f"{worst['max_abs_diff']:.3g}", f"{worst['miou_delta']:.4f}",
                     f"{adversarial['agreement']:.4%}", f"{adversarial['max_abs_diff']:.3g}"))  # fmt: skip
    div = summary["divergence"]
    note = (
        f"<p>Divergence search: the engine agrees with the fp32 reference on {div['agreement_with_reference']:.4%} "
        "of pixels of the images it produced.</p>"
        if div["ran"]
        else "<p>Divergence search: not run (the deployed graph is the reference itself).</p>"
    )
    return (
        _table(["twin", "clean agreement", "clean max |Δ|", "clean |ΔmIoU|", "adv. agreement", "adv. max |Δ|"], rows)
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
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    worst = summary["worst_case"]
    eps = [0.0] + [w["eps"] * 255 for w in worst]
    for ax, key, title in zip(axes, ("miou", "pixel_accuracy"), ("worst-case mIoU", "worst-case pAcc"), strict=True):
        ax.plot(eps, [summary["clean"]["engine"][key]] + [w["engine"][key] for w in worst], "o-", lw=2.5,
                color="black", label="engine (all attacks)")  # fmt: skip
        for twin in summary["twins"]:
            values = [summary["clean"][twin][key]] + [(w["twins"][twin] or {}).get(key, np.nan) for w in worst]
            ax.plot(eps, values, "s--", label=f"{twin} twin (its own attacks)")
        ax.set_xlabel("ε (grey levels of 255)")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _class_bars(summary: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    last = summary["worst_case"][-1]
    names = summary["class_names"] or [str(i) for i in range(len(last["per_class_iou"]["clean"]))]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.5))
    for offset, key, label in (
        (-0.2, "clean", "engine, clean"),
        (0.2, "engine", f"engine, worst case ε={last['eps_text']}"),
    ):
        values = [np.nan if v is None else v for v in last["per_class_iou"][key]]
        ax.bar(x + offset, values, width=0.4, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _overlays(result: VerifyResult, palette: np.ndarray) -> bytes:
    """Rows: clean image | engine on clean | worst adversarial (largest ε) | engine on it | labels."""
    from harden.visualize import colorize, panel_figure

    examples, predictions = result.engine.examples, result.example_predictions
    eps = max(r.eps for r in result.engine.runs)
    images, labels, adversarial = examples["images"], examples["labels"], examples[f"worst@{eps}"]
    titles = ("clean image", "engine, clean", f"worst adversarial ε={format_eps(eps)}", "engine, adversarial", "labels")
    rows = [
        (images[i].permute(1, 2, 0).numpy(), colorize(predictions["clean"][i], palette),
         adversarial[i].permute(1, 2, 0).numpy(), colorize(predictions["adversarial"][i], palette),
         colorize(labels[i], palette))
        for i in range(len(images))
    ]  # fmt: skip
    return _png(panel_figure(rows, titles, width=14))


def write_reports(
    result: VerifyResult, gates: list[GateResult], options: dict[str, Any], class_names: list[str],
    out: Path, palette: np.ndarray,
) -> list[Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(result, gates, options, class_names)
    write_json(out / "verify.json", summary)
    write_junit(summary, out / "junit.xml")
    write_html(summary, result, out / "report.html", palette)
    return [out / "verify.json", out / "junit.xml", out / "report.html"]
