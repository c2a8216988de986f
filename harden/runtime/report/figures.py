"""The report's plots and overlays as PNG bytes, embedded in `report.html`."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from harden.attacks.threat import format_eps
from harden.runtime.report.record import Scores, VerifyReport
from harden.runtime.verify_result import VerifyResult


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def embedded(png: bytes) -> str:
    return f"<img style='max-width:100%' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def robustness_curves(report: VerifyReport) -> bytes:
    """Worst-case mIoU and pAcc against ε: the engine and every twin, each line with its own marker
    and a small horizontal offset, so a twin that coincides with the engine stays visible."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    worst = report.worst_case
    eps = np.array([0.0] + [w.eps * 255 for w in worst])
    shift = 0.04 * max(float(eps.max()), 1.0)
    styles = [("s", "--"), ("^", ":"), ("D", "-.")]
    for ax, key, label in zip(axes, ("miou", "pixel_accuracy"), ("worst-case mIoU", "worst-case pixel accuracy"),
                              strict=True):  # fmt: skip
        ax.plot(eps, [_value(report.clean["engine"], key)] + [_value(w.engine, key) for w in worst],
                "o-", lw=2.5, ms=7, color="black", label="engine (all attacks)", zorder=3)  # fmt: skip
        for n, twin in enumerate(report.twins):
            marker, line = styles[n % len(styles)]
            values = [_value(report.clean.get(twin), key)] + [_value(w.twins.get(twin), key) for w in worst]
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


def class_iou_bars(report: VerifyReport) -> bytes:
    """Per-class IoU clean and at the largest ε; a class with no pixel in the labels or the
    predictions has no IoU and is marked "absent" instead of drawn as 0."""
    import matplotlib.pyplot as plt

    last = report.worst_case[-1]
    clean, attacked = last.per_class_iou["clean"], last.per_class_iou["engine"]
    names = report.class_names or [str(i) for i in range(len(clean))]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.8))
    for offset, ious, label in (
        (-0.2, clean, "engine, clean"),
        (0.2, attacked, f"engine, worst case ε={last.eps_text}"),
    ):
        values = [np.nan if v is None else v for v in ious]
        ax.bar(x + offset, values, width=0.4, label=label)
    absent = [i for i in x if clean[i] is None and attacked[i] is None]
    for i in absent:
        ax.text(float(i), 0.02, "absent", rotation=90, ha="center", va="bottom", fontsize=7, color="#777")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU" + (" (absent: no pixel of the class in these images)" if absent else ""))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def worst_overlays(report: VerifyReport, result: VerifyResult, palette: np.ndarray) -> bytes:
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
    names = report.class_names or [str(c) for c in range(len(palette))]
    shown = sorted({int(c) for t in (labels, predictions["clean"], predictions["adversarial"]) for c in t.unique()
                    if 0 <= int(c) < len(names)})  # fmt: skip
    fig = plt.figure(figsize=(14, 0.35 + 0.3 * math.ceil(len(shown) / 6)))
    handles = [Patch(color="#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[c][:3])), label=names[c])
               for c in shown]  # fmt: skip
    fig.legend(handles=handles, loc="center", ncol=6, fontsize=9, frameon=False, title="classes in these images")
    return _stack(png, _png(fig))


def _value(scores: Scores | None, key: str) -> float:
    """A score for a plot: NaN (a gap in the line) where there is none."""
    value = None if scores is None else getattr(scores, key)
    return np.nan if value is None else float(value)


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
