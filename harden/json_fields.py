"""Reading a JSON object into typed records: every field checked once, errors naming file and field.

The records that cross a seam (the export manifest, the verify report) write themselves with
`to_dict` and read themselves with `from_dict(Fields(...))`; this is the one place that looks
values up by key and checks their type, so a wrong or missing field is an `InputError` (exit 2)
that says where it is and how to fix it, never a KeyError deep inside verify.
"""

from __future__ import annotations

import math
from typing import Any

from harden.errors import InputError


class Fields:
    """Typed access to one JSON object. `where` names it in errors ("manifest.json: onnx[0]");
    `fix` is the remedy every error ends with ("export again")."""

    def __init__(self, data: object, where: str, fix: str) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{where} must be an object, got {type(data).__name__}; {fix}")
        self.data: dict[str, Any] = data
        self.where = where
        self.fix = fix

    def bad(self, name: str, expected: str) -> InputError:
        got = repr(self.data.get(name))[:80]
        return InputError(f"{self.where}: field {name!r} must be {expected}, got {got}; {self.fix}")

    def _value(self, name: str, kinds: type | tuple[type, ...], expected: str, optional: bool) -> Any:
        value = self.data.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
            raise self.bad(name, expected)
        return value

    def string(self, name: str, optional: bool = False) -> Any:
        return self._value(name, str, "a string", optional)

    def boolean(self, name: str, optional: bool = False) -> Any:
        return self._value(name, bool, "true or false", optional)

    def integer(self, name: str, optional: bool = False, low: int | None = None, high: int | None = None) -> Any:
        value = self._value(name, int, "an integer", optional)
        too_low = low is not None and value is not None and value < low
        too_high = high is not None and value is not None and value > high
        if too_low or too_high:
            raise self.bad(name, f"an integer between {low} and {high}")
        return value

    def number(self, name: str, optional: bool = False) -> Any:
        value = self._value(name, (int, float), "a number", optional)
        if value is not None and not math.isfinite(value):
            raise self.bad(name, "a finite number")
        return None if value is None else float(value)

    def strings(self, name: str, optional: bool = False) -> Any:
        value = self._value(name, list, "a list of strings", optional)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise self.bad(name, "a list of strings")
        return value

    def integers(self, name: str) -> Any:
        value = self._value(name, list, "a list of integers", False)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.bad(name, "a list of integers")
        return value

    def counts(self, name: str, optional: bool = False) -> Any:
        """An object of non-negative integers (op counts)."""
        value = self._value(name, dict, "an object of counts", optional)
        if value is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                         for v in value.values()):  # fmt: skip
            raise self.bad(name, "an object of counts")
        return value

    def raw_object(self, name: str, optional: bool = False) -> Any:
        """An object kept as JSON (written for people; nothing computes with it)."""
        return self._value(name, dict, "an object", optional)

    def object(self, name: str, optional: bool = False) -> Fields | None:
        value = self._value(name, dict, "an object", optional)
        return None if value is None else Fields(value, f"{self.where}: {name}", self.fix)

    def required_object(self, name: str) -> Fields:
        found = self.object(name)
        assert found is not None
        return found

    def objects(self, name: str) -> list[Fields]:
        """A list of objects (a missing list reads as empty)."""
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.bad(name, "a list of objects")
        return [Fields(v, f"{self.where}: {name}[{i}]", self.fix) for i, v in enumerate(value)]

    def object_map(self, name: str, optional: bool = False) -> dict[str, Fields] | None:
        """An object whose values are objects (e.g. parity by precision)."""
        value = self._value(name, dict, "an object of objects", optional)
        if value is None:
            return None
        return {k: Fields(v, f"{self.where}: {name}.{k}", self.fix) for k, v in value.items()}


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)
