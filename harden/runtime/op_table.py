"""The graph twin's op table: which torch function computes an ONNX node, for which opsets.

An entry is keyed by (domain, op type) and holds one or more implementations, each valid for a
range of opset versions of its domain — the way ONNX versions operators (Softmax before opset 13
coerces its input to 2-D; from 13 it works along one axis). The graph's `opset_import` picks the
implementation when the graph is loaded (`runtime/graph_program.py`); an opset newer than the
table knows, an op version the table has no implementation for, or an attribute an
implementation cannot compute is refused there, with the node, the op and the attribute named
— never a wrong number, never a failure in the middle of an attack.

`KNOWN_OPSETS` is the newest opset of each domain whose changes the table has been checked
against (ONNX's own node cases, tests/test_twin_conformance.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Value = torch.Tensor | None
Attributes = dict[str, Any]
Op = Callable[[list[Value], Attributes], Sequence[torch.Tensor] | torch.Tensor]


@dataclass(frozen=True)
class NodeInputs:
    """What is known of a node's inputs when the graph is loaded: their names ("" for an omitted
    optional input) and, for those that are constants of the graph, their values."""

    names: list[str]
    constants: list[Value]

    def named(self, index: int) -> bool:
        return len(self.names) > index and bool(self.names[index])

    def constant(self, index: int) -> Value:
        return self.constants[index] if len(self.constants) > index else None


# A load-time check: why this node cannot be computed (naming the attribute or input), or None.
Refusal = Callable[[Attributes, NodeInputs], str | None]

KNOWN_OPSETS: dict[str, int] = {"": 28, "com.microsoft": 1, "harden": 1}

# Set in the attributes of a node whose op computes several outputs: how many the node names,
# so an op skips the work of optional outputs nobody reads (LayerNormalization's Mean/InvStdDev).
WANTED_OUTPUTS = "__wanted_outputs"


@dataclass(frozen=True)
class Impl:
    """One implementation of an op, valid for opsets `since` … `until` (None: the newest known)."""

    fn: Op
    since: int = 1
    until: int | None = None
    refuse: Refusal | None = None
    outputs: int = 1  # how many outputs it computes (a node naming more is refused at load)

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


OPS: dict[tuple[str, str], list[Impl]] = {}


def register(
    domain: str,
    name: str,
    fn: Op,
    since: int = 1,
    until: int | None = None,
    refuse: Refusal | None = None,
    outputs: int = 1,
) -> None:
    OPS.setdefault((domain, name), []).append(Impl(fn, since, until, refuse, outputs))


def op(
    *names: str,
    domain: str = "",
    since: int = 1,
    until: int | None = None,
    refuse: Refusal | None = None,
    outputs: int = 1,
) -> Callable[[Op], Op]:
    """Decorator: register `fn` for each of `names` in `domain`, opsets `since` … `until`."""

    def add(fn: Op) -> Op:
        for name in names:
            register(domain, name, fn, since, until, refuse, outputs)
        return fn

    return add


def resolve(domain: str, name: str, opset: int) -> Impl | None:
    """The implementation of `domain::name` at `opset`, or None if the table has none."""
    for impl in OPS.get((domain, name), []):
        if impl.covers(opset):
            return impl
    return None


def latest(domain: str, name: str) -> Op:
    """The implementation at the newest known opset (for code that calls one op directly)."""
    impl = resolve(domain, name, KNOWN_OPSETS[domain])
    if impl is None:
        raise KeyError(f"{domain}::{name}")
    return impl.fn


def _t(value: Value) -> torch.Tensor:
    assert value is not None, "a required input is missing"
    return value


def _ints(value: Value) -> list[int]:
    return [int(v) for v in _t(value).flatten().tolist()]


def optional(x: list[Value], index: int) -> Value:
    """Input `index`, or None when it is omitted (absent or the empty name)."""
    return x[index] if len(x) > index else None
