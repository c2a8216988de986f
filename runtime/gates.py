"""Release gates over a `VerifyResult`: pass (exit 0) or fail (exit 1), failing closed.

Defaults depend on the deployed precision (the parity tolerances of `harden export`), and any
of them can be set from a TOML or JSON file (`[gates]` table or top-level keys) or from flags:

    clean_agreement = 0.999        # engine vs every twin, argmax on clean images, worst draw
    clean_miou_delta = 0.001       # |mIoU(engine) − mIoU(twin)| on clean images, worst draw
    adversarial_agreement = 0.99   # engine vs the twin that crafted the images
    survival = 0.95                # engine robust mIoU ≥ survival × twin robust mIoU, every ε
    min_robust_miou = 0.0          # engine worst-case mIoU at every ε (0: no floor)

A signed export also raises the source twin's clean-agreement gate to the agreement the export
itself recorded, minus one point (`Gates.derived_from_export`), unless clean_agreement is set:
an int8 file a point worse than when it was exported fails although it is above the 0.90 floor.

Fail closed: no images, a failed audit, and a failed sanity check (including one whose premise
was present but that could not measure anything) fail the verdict; a check whose premise the
user left out (no single-step attack for iterative>single) is "n/a" with its reason. The
`engine-arithmetic` gate fails when the engine's kernels on this
hardware compute something other than the file as written (`harden.export.arithmetic`; its
threshold per precision is `MIN_AGREEMENT` there): the file may be faithful while the engine
is not, and the gate's detail names the cause.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from harden.attacks.checks import Check
from harden.attacks.threat import format_eps
from harden.errors import InputError
from harden.export.tolerances import ADVERSARIAL_AGREEMENT, TOLERANCES
from harden.runtime.verify import VerifyResult
from harden.runtime.verify_state import Parity

# how far below its own export's recorded parity a deployed file may fall (sampling: verify's
# images are not the export's 8); Gates.derived_from_export
EXPORT_PARITY_MARGIN = 0.01

# the export's parity tolerances are the clean gates (one table: harden.export.tolerances)
PRECISION_DEFAULTS: dict[str, dict[str, float]] = {
    precision: {
        "clean_agreement": tolerance.min_agreement,
        "clean_miou_delta": tolerance.max_miou_change,
        "adversarial_agreement": ADVERSARIAL_AGREEMENT[precision],
    }
    for precision, tolerance in TOLERANCES.items()
}


@dataclass(frozen=True)
class Gates:
    clean_agreement: float
    clean_miou_delta: float
    adversarial_agreement: float
    survival: float = 0.95
    min_robust_miou: float = 0.0
    # Derived, not set by the user: the export's own recorded agreement with its PyTorch model
    # minus EXPORT_PARITY_MARGIN, for the source twin (the same comparison the export made).
    # A file that became a point worse than when it was exported fails, even above the
    # precision's floor (`derived_from_export`).
    export_agreement: float | None = None

    @classmethod
    def for_precision(cls, precision: str, **overrides: float | None) -> Gates:
        gates = cls(**PRECISION_DEFAULTS[precision])
        return gates.with_values({k: v for k, v in overrides.items() if v is not None})

    def with_values(self, values: dict[str, Any]) -> Gates:
        known = {f.name for f in fields(self)} - {"export_agreement"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown gate {', '.join(unknown)}; gates are {', '.join(sorted(known))}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise InputError(f"gate {name} must be a number in [0, 1], got {value!r}")
        return replace(self, **{k: float(v) for k, v in values.items()})

    def derived_from_export(self, recorded_agreement: float | None) -> Gates:
        """These gates with the source twin's clean agreement raised to the export's recorded
        parity minus the margin (never lowered below the precision's floor); unchanged without a
        recorded figure."""
        if recorded_agreement is None:
            return self
        return replace(self, export_agreement=recorded_agreement)

    def source_agreement(self) -> float:
        """The clean-agreement threshold for the source twin."""
        if self.export_agreement is None:
            return self.clean_agreement
        return max(self.clean_agreement, self.export_agreement - EXPORT_PARITY_MARGIN)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _toml() -> Any:
    """tomllib (Python ≥ 3.11) or its backport tomli, which the package requires on 3.10."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib


def read_gate_file(path: Path) -> dict[str, Any]:
    """Gate values from a .toml or .json file (a `[gates]` table or top-level keys)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read the gate file {path}: {err}") from err
    try:
        if path.suffix == ".toml":
            data: Any = _toml().loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise InputError(f"{path}: gate files are .toml or .json")
    except (ValueError, ImportError) as err:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{path}: not a valid gate file ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a table of gate values")
    table = data.get("gates", data)
    if not isinstance(table, dict):
        raise InputError(f"{path}: [gates] must be a table")
    return table


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sanity_gate(checks: list[Check]) -> GateResult:
    """Fails on a failed check. A check whose premise this run lacks by the user's choice (e.g.
    iterative>single without a single-step attack) is "n/a": it says why and does not decide
    the verdict (DESIGN.md §6). A check whose premise was there but that measured nothing says
    "fail" itself (see `harden.attacks.checks`), so it fails closed here."""
    failed = [c for c in checks if c.status == "fail"]
    absent = [c for c in checks if c.status == "n/a"]
    if failed:
        return GateResult("sanity-checks", False, "; ".join(f"{c.name} fail: {c.detail}" for c in failed))
    detail = f"{len(checks) - len(absent)} sanity checks passed (DESIGN.md §6)"
    if absent:
        detail += "; n/a, premise not in this run: " + "; ".join(f"{c.name} ({c.detail})" for c in absent)
    return GateResult("sanity-checks", True, detail)


def clean_parity_gates(twin: str, parities: list[Parity], gates: Gates) -> list[GateResult]:
    """Agreement and mIoU change of the engine against `twin` on clean images, worst RAD draw.
    The source twin's agreement gate is the export's recorded parity minus the margin when that
    is stricter than the precision's floor."""
    agreement = min(p.agreement for p in parities)
    delta = max(p.miou_delta() for p in parities)
    threshold, why = gates.clean_agreement, ""
    if twin == "source" and gates.source_agreement() > gates.clean_agreement:
        threshold = gates.source_agreement()
        why = f": the export's recorded {gates.export_agreement:.2%} − {EXPORT_PARITY_MARGIN:.0%}"
    return [
        GateResult(
            f"clean-agreement[{twin}]",
            agreement >= threshold,
            f"engine vs {twin} twin on clean images: argmax agreement {agreement:.4%} "
            f"(gate ≥ {threshold:.2%}{why}), max |Δlogit| {max(p.max_abs for p in parities):.3g}",
        ),
        GateResult(
            f"clean-miou-delta[{twin}]",
            delta <= gates.clean_miou_delta,
            f"|mIoU(engine) − mIoU({twin})| {delta:.4f} (gate ≤ {gates.clean_miou_delta})",
        ),
    ]


def evaluate_gates(result: VerifyResult, gates: Gates, eps_values: list[float]) -> list[GateResult]:
    """Every gate, in the order a reader checks them; the verdict passes only if all pass."""
    out = [
        GateResult(
            "data",
            result.images > 0 and all(result.engine.worst_at(e) is not None for e in eps_values),
            f"{result.images} images, every ε attacked",
        )
    ]
    failed = [c for c in result.audits if c.status == "fail"]
    out.append(
        GateResult(
            "deployment-audits",
            not failed,
            "; ".join(c.detail for c in failed) or f"{len(result.audits)} audits passed or not applicable",
        )
    )
    arithmetic = result.engine_arithmetic
    out.append(
        GateResult(
            "engine-arithmetic",
            arithmetic["status"] != "fail",
            ("n/a: " if arithmetic["status"] == "n/a" else "") + arithmetic["detail"],
        )
    )
    out.append(_sanity_gate(result.checks))
    for twin, parities in result.clean_parity.items():
        out += clean_parity_gates(twin, parities, gates)
    for twin, parity in result.adversarial_parity.items():
        out.append(
            GateResult(
                f"adversarial-agreement[{twin}]",
                parity.pixels > 0 and parity.agreement >= gates.adversarial_agreement,
                f"engine vs {twin} twin on the images attacks crafted on it: agreement {parity.agreement:.4%} "
                f"(gate ≥ {gates.adversarial_agreement:.2%}) — adversarial inputs sit near decision boundaries",
            )
        )
    if result.divergence["ran"]:
        rate = result.divergence["agreement_with_reference"]
        out.append(
            GateResult(
                "divergence",
                rate is not None and rate >= gates.adversarial_agreement,
                f"on divergence-search images the engine agrees with the fp32 reference on {rate:.4%} of pixels "
                f"(gate ≥ {gates.adversarial_agreement:.2%})",
            )
        )
    for eps in eps_values:
        engine = result.worst_at(eps)
        for twin in result.twins:
            twin_worst = result.twin_worst_at(twin, eps)
            twin_miou = twin_worst.miou if twin_worst is not None else math.nan
            out.append(
                GateResult(
                    f"survival[{twin}]@{format_eps(eps)}",
                    not math.isnan(twin_miou) and engine.miou >= gates.survival * twin_miou,
                    f"engine worst-case mIoU {engine.miou:.4f} vs {twin} twin {twin_miou:.4f} "
                    f"(gate ≥ {gates.survival} × twin)",
                )
            )
        if gates.min_robust_miou > 0:
            out.append(
                GateResult(
                    f"robust-miou@{format_eps(eps)}",
                    engine.miou >= gates.min_robust_miou,
                    f"engine worst-case mIoU {engine.miou:.4f} (gate ≥ {gates.min_robust_miou})",
                )
            )
    return out
