"""`report.html`: verdict, gates, plots, tables and the worst images on one self-contained page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from harden._io import atomic_open
from harden.attacks.threat import format_eps
from harden.export.arithmetic import ArithmeticRecord
from harden.ram.config import RAMConfig
from harden.runtime.report.figures import class_iou_bars, embedded, robustness_curves, worst_overlays
from harden.runtime.report.record import Confidence, GateRecord, Scores, VerifyReport
from harden.runtime.verify_result import VerifyResult


def write_html(report: VerifyReport, result: VerifyResult, path: Path, palette: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")

    verdict = report.verdict
    gates = report.gates
    failed = [g for g in gates if g.outcome == "fail"]
    undecided = [g for g in gates if g.outcome == "inconclusive"]
    ordered = failed + undecided + [g for g in gates if g.passed]  # a reader looks for what failed first
    heading = (f"Gates: {len(failed)} of {len(gates)} failed" if failed else f"Gates: all {len(gates)} passed"
               if not undecided else f"Gates: none failed, {len(undecided)} of {len(gates)} inconclusive")  # fmt: skip
    if failed and undecided:
        heading += f", {len(undecided)} inconclusive"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>harden verify: {html.escape(report.deployment.artefact)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:90%}.pass{background:#d8f5d8}"
        ".fail{background:#f8d0d0}.inconclusive{background:#fbe7b5}.na{background:#eee}"
        "h1 span{padding:2px 12px;border-radius:6px}"
        ".meta{color:#555;font-size:85%}code{background:#f4f4f4;padding:1px 4px}</style></head><body>",
        f"<h1>harden verify — <span class='{verdict}'>{verdict.upper()}</span></h1>",
        f"<p><b>{html.escape(verdict_meaning(report))}</b></p>",
        _header(report),
        "<h2>Headline: clean → worst case, engine vs reference</h2>",
        _headline_table(report),
        *_not_judged(report.not_judged),
        f"<h2>{html.escape(heading)}</h2>",
        f"<p class='meta'>{html.escape(_confidence_text(report.confidence))}</p>",
        _table(
            ["gate", "result", "estimate [interval]", "gate", "detail"],
            [(g.name, g.outcome, _interval_text(g), _threshold_text(g), g.detail) for g in ordered],
        ),
        "<h2>Robustness: engine vs twins</h2>",
        embedded(robustness_curves(report)),
        "<h2>Per-class IoU</h2>",
        embedded(class_iou_bars(report)),
        "<h2>Twin vs engine</h2>",
        _parity_table(report),
        *_localisation(report.localisation),
        "<h2>Engine arithmetic: this engine on this hardware vs the file as written</h2>",
        _arithmetic_table(report.engine_arithmetic),
        "<h2>Deployment audits</h2>",
        _table(["audit", "status", "detail"], [(c.name, c.status, c.detail) for c in report.audits]),
        "<h2>Sanity checks (docs/design.md §6)</h2>",
        _table(["check", "status", "detail"], [(c.name, c.status, c.detail) for c in report.checks]),
        "<h2>Deployment</h2>",
        _deployment_table(report),
        "<h2>Adversarial images on the engine</h2>",
        overlay_caption(report, result),
        embedded(worst_overlays(report, result, palette)),
        "</body></html>",
    ]
    with atomic_open(path, "w") as f:
        f.write("\n".join(parts))


def _interval_text(gate: GateRecord) -> str:
    interval = gate.interval
    if interval is None:
        return "exact"
    point, low, high = interval["point"], interval["low"], interval["high"]  # harden.runtime.confidence.Interval
    if low is None or high is None or point is None:
        return "no estimate"
    return f"{point:.4f} [{low:.4f}, {high:.4f}]"


def _threshold_text(gate: GateRecord) -> str:
    return "" if gate.threshold is None else f"{gate.threshold:.4g}"


def _confidence_text(c: Confidence) -> str:
    alpha = 1 - c.level
    text = (f"Each gate on a sampled figure decides from its {c.level:.0%} interval ({c.method}): pass when the "
            "interval clears the gate, fail when it misses it, inconclusive (fails closed) when it straddles it. "
            f"A PASS needs every gate to pass, so a deployment that misses any gate passes with probability at "
            f"most {alpha:.0%}; the gates a FAIL names are wrong together with probability at most {alpha:.0%} "
            "(Holm across the estimated gates). The intervals hold at every number of images at once, so "
            f"looking again does not change these rates. {c.images_used} images")  # fmt: skip
    if len(c.looks) > 1:
        text += f"; --images auto looked at {', '.join(str(n) for n in c.looks)} images"
    return text + "."


def verdict_meaning(report: VerifyReport) -> str:
    """What the verdict says, and what it does not: PASS is about the deployment, not the model."""
    gates = report.gates
    failed = sum(g.outcome == "fail" for g in gates)
    undecided = sum(g.outcome == "inconclusive" for g in gates)
    if report.verdict == "fail":
        return (f"FAIL: {failed} of {len(gates)} gates failed (listed first below). The deployment does not "
                "preserve the robustness of its reference, or could not be verified.")  # fmt: skip
    if report.verdict == "inconclusive":
        more = [g.more_images for g in gates if g.outcome == "inconclusive"]
        most = max((m for m in more if m is not None), default=0)
        hint = f" About {most} more image{'s' if most != 1 else ''} would decide." if more and None not in more else ""
        return (f"INCONCLUSIVE: no gate failed, but {undecided} of {len(gates)} could not decide at "
                f"{report.confidence.level:.0%} confidence (listed first below); the release does not "
                f"pass.{hint} Run with more --images, or --images auto.")  # fmt: skip
    text = ("PASS: the deployed engine preserves the robustness of its reference (every gate passed). "
            "It does not say the model is robust")  # fmt: skip
    last = report.worst_case[-1] if report.worst_case else None
    clean = report.clean["engine"].miou
    if last is not None and last.engine is not None and clean is not None and last.engine.miou is not None:
        text += (f": its worst-case mIoU falls from {clean:.3f} clean to "
                 f"{last.engine.miou:.3f} at ε = {last.eps_text}")  # fmt: skip
    floor = report.options.get("gates", {}).get("min_robust_miou", 0.0)
    if not floor:
        text += ". No robust-mIoU floor was set (--gate min_robust_miou=VALUE sets one)"
    return text + "."


def _header(report: VerifyReport) -> str:
    v = report.versions
    versions = ", ".join(f"{k} {v[k]}" for k in ("harden", "torch", "onnxruntime", "tensorrt") if v.get(k))
    d = report.deployment
    lines = [
        f"{html.escape(report.created)} · {html.escape(versions)}",
        f"<code>{html.escape(report.command)}</code>",
        f"{html.escape(d.artefact)} ({d.precision}, {html.escape(d.engine)}) · model {html.escape(str(d.model))} · "
        f"{html.escape(ram_in_words(d.ram))}",
        f"{report.images} images · {report.draws} RAD draw(s) · EOT {report.eot} · "
        "<a href='verify.json'>verify.json</a> · <a href='junit.xml'>junit.xml</a>",
    ]
    return "<p class='meta'>" + "<br>".join(lines) + "</p>"


def ram_in_words(ram: RAMConfig | None) -> str:
    """RAM settings as a sentence (the header), not a Python dict."""
    return "no Robust Attention Mechanism recorded" if ram is None else "RAM: " + ram.in_words()


def _headline_table(report: VerifyReport) -> str:
    """Clean and worst-case mIoU / pAcc per ε on the engine and each twin, and the survival ratio.
    A twin's mIoU and pAcc are its worst case under its own white-box attacks (its robustness
    curve); the survival ratio is the gate's: both worst cases over the same candidate images."""
    twins = report.twins
    header = ["ε", "engine mIoU", "engine pAcc"]
    for twin in twins:
        header += [f"{twin} mIoU (own attacks)", f"{twin} pAcc (own attacks)",
                   f"survival vs {twin} (same candidates)"]  # fmt: skip

    def cells(engine: Scores | None, own: dict[str, Scores | None], same: dict[str, Scores | None]) -> list[str]:
        row = [_fmt(engine, "miou"), _fmt(engine, "pixel_accuracy")]
        for twin in twins:
            other = same.get(twin)
            ratio = (engine.miou / other.miou) if engine and other and engine.miou is not None and other.miou else None
            row += [_fmt(own.get(twin), "miou"), _fmt(own.get(twin), "pixel_accuracy"),
                    "—" if ratio is None else f"{ratio:.3f}"]  # fmt: skip
        return row

    clean: dict[str, Scores | None] = {t: report.clean.get(t) for t in twins}
    rows = [("clean", *cells(report.clean["engine"], clean, clean))]
    rows += [(w.eps_text, *cells(w.engine, w.twins, w.twins_same_candidates)) for w in report.worst_case]
    return _table(header, rows)


def _fmt(scores: Scores | None, key: str) -> str:
    value = None if scores is None else getattr(scores, key)
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


def _arithmetic_table(arithmetic: ArithmeticRecord) -> str:
    """Figures, then the cause and remedy when the engine's kernels differ from the file."""
    verdict = arithmetic.verdict
    if verdict is None:
        return _table(["audit", "status", "detail"], [("engine-arithmetic", "n/a", arithmetic.detail)])
    c = verdict.comparison
    rows: list[tuple[Any, ...]] = [
        ("argmax agreement", arithmetic.status, f"{c.argmax_agreement:.4%} (gate ≥ {verdict.min_agreement:.2%})"),
        ("max |Δlogit|", "", f"{c.max_abs_diff:.3g}"),
        ("mIoU as written → deployed", "", f"{c.miou_as_written:.4f} → {c.miou_deployed:.4f}"),
        ("engine, CPU", "", f"{verdict.engine}; {verdict.cpu}"),
        ("int8 weights beyond ±64", "", f"{verdict.int8_weights_beyond_bound} of {verdict.int8_weight_tensors}"),
    ]
    if verdict.cause:
        rows += [("cause", "fail", verdict.cause), ("remedy", "", verdict.remedy)]
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


def _deployment_table(report: VerifyReport) -> str:
    d = report.deployment
    rows = [("directory", d.dir), ("artefact", d.artefact), ("engine", d.engine), ("precision", d.precision),
            ("model", d.model or "not recorded"), ("RAM", ram_in_words(d.ram)), ("twins", ", ".join(report.twins)),
            ("images", report.images), ("RAD draws / EOT", f"{report.draws} / {report.eot}")]  # fmt: skip
    if not d.signed:
        rows.insert(0, ("signature", "unsigned: no manifest (a bare ONNX file; provenance not recorded)"))
        rows.append(("interface", d.interface_text))
        rows.append(("reference", d.reference or "none (survival judged against the deployed graph's own twin)"))
    rows += [(f"sha256 {name}", digest) for name, digest in d.files.items()]
    return _table(["", ""], rows)


def _parity_table(report: VerifyReport) -> str:
    rows = []
    for twin, parities in report.parity.clean.items():
        # each figure is its own worst over the RAD draws, exactly as the gates judge it
        agreement = min(p.agreement for p in parities)
        max_abs = max(p.max_abs_diff or 0.0 for p in parities)
        miou_delta = max(p.miou_delta or 0.0 for p in parities)
        adversarial = report.parity.adversarial[twin]
        rows.append((twin, f"{agreement:.4%}", f"{max_abs:.3g}", f"{miou_delta:.4f}",
                     f"{adversarial.agreement:.4%}", f"{adversarial.max_abs_diff or 0.0:.3g}"))  # fmt: skip
    div = report.divergence
    note = (
        f"<p>Divergence search: the engine agrees with the fp32 reference on {div.agreement_with_reference:.4%} "
        "of pixels of the images it produced.</p>"
        if div.ran and div.agreement_with_reference is not None
        else "<p>Divergence search: not run (the deployed graph is the reference itself).</p>"
    )
    header = ["twin", "clean agreement", "clean max |Δlogit|", "clean |ΔmIoU|", "adv. agreement", "adv. max |Δlogit|"]
    return (
        "<p>Each figure is its worst over the RAD draws (the gates use the same numbers).</p>"
        + _table(header, rows)
        + note
    )


def _worst_rows(report: VerifyReport, result: VerifyResult) -> list[tuple[int, float | None, str]]:
    """(image id, pAcc, attack) of each image shown: its lowest pAcc over attacks and draws at
    the largest ε, and the attack (and its member) that reached it."""
    eps = max(r.eps for r in result.engine.runs)
    worst = report.worst_at(eps)
    assert worst is not None, "every attacked ε has a worst case"
    ids = [int(i) for i in result.engine.examples[f"worst-ids@{eps}"].tolist()]
    return [(i, worst.per_image[i].pixel_accuracy, worst.per_image[i].attack) for i in ids]


def overlay_caption(report: VerifyReport, result: VerifyResult) -> str:
    eps = max(r.eps for r in result.engine.runs)
    rows = [(f"row {n + 1}", f"image {i}", "—" if acc is None else f"{acc:.3f}", attack)
            for n, (i, acc, attack) in enumerate(_worst_rows(report, result))]  # fmt: skip
    return (
        f"<p>The {len(rows)} images with the lowest engine pixel accuracy at ε = {format_eps(eps)}, over every attack "
        "and RAD draw (the engine's prediction is from the draw that reached it):</p>"
        + _table(["", "image (dataset index)", "lowest pAcc", "attack[crafted on]:member@draw"], rows)
    )
