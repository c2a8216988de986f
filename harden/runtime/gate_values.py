"""What the release gates are set to: the defaults per deployed precision, the export's recorded
parity, and the values a user sets from a TOML or JSON file or from flags (`harden.runtime.gates`
describes each gate and how it decides)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from harden.errors import InputError
from harden.export.tolerances import ADVERSARIAL_AGREEMENT, TOLERANCES

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

    def source_agreement(self, shift: float = 0.0) -> float:
        """The clean-agreement threshold for the source twin; `shift` widens the margin by how far
        this machine's engine computes the file differently (`arithmetic_shift`)."""
        if self.export_agreement is None:
            return self.clean_agreement
        return max(self.clean_agreement, self.export_agreement - EXPORT_PARITY_MARGIN - shift)

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
