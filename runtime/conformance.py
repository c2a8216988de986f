"""The graph twin held to ONNX's own operator conformance cases (`onnx.backend.test.case.node`).

Each case is a small graph with inputs and reference outputs that the ONNX project uses to define
its operators. A case runs through the twin exactly as a deployed file does (`GraphProgram`:
opsets resolved and attributes checked at load) and through ONNX Runtime, the engine. The twin
must give the reference output within the case's tolerances — or, where ONNX Runtime itself
departs from the reference, ONNX Runtime's output (the twin follows the engine it stands for;
docs/graph_twin_ops.md lists where).

Outcomes: `pass`, `follows-ort` (passes against ONNX Runtime where it departs from the reference),
`refused` (the twin refused the graph at load, naming node, op and reason — exit 2 in verify),
`not-in-table` (an op the table lacks; also refused at load), `raises` (failed while running —
must not happen), `wrong` (a wrong number — must not happen), and `not-tensors` (sequences,
optionals or strings: not what a segmentation graph computes on; not run).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from harden.errors import InputError
from harden.runtime.graph_program import GraphProgram, opsets_of, to_torch

OUTCOMES = ("pass", "follows-ort", "refused", "not-in-table", "raises", "wrong", "not-tensors")
FP16_RTOL = 2.0**-9  # two float16 steps at 1.0
TORCH_NUMPY = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}


@dataclass(frozen=True)
class CaseResult:
    name: str
    outcome: str
    detail: str = ""


def node_cases() -> list[Any]:
    """ONNX's node conformance cases (about 1,900 with onnx 1.23; a few seconds to build)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the case generators overflow casts on purpose
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return [case for case in collect_testcases() if case.kind == "node"]


def _plain(value: Any) -> bool:
    return isinstance(value, np.ndarray | np.generic) and value.dtype.name in TORCH_NUMPY


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    initialised = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initialised]


def data_sets(case: Any) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    for inputs, outputs in case.data_sets:
        arrays = [np.asarray(value) for value in inputs]  # numpy scalars are 0-d tensors
        yield dict(zip(graph_inputs(case.model), arrays, strict=False)), [np.asarray(value) for value in outputs]


def is_plain(case: Any) -> bool:
    """Whether every input and output is a tensor of a type torch has."""
    return bool(case.data_sets) and all(
        all(_plain(v) for v in inputs) and all(_plain(v) for v in outputs) for inputs, outputs in case.data_sets
    )


def load(case: Any) -> GraphProgram:
    """The case's graph as the twin loads a deployed file (refusals raise InputError)."""
    return GraphProgram(case.model.graph, opsets_of(case.model), case.name)


def run_twin(program: GraphProgram, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[torch.Tensor]:
    values: dict[str, torch.Tensor | None] = dict(program.constants)
    values.update({name: to_torch(array) for name, array in inputs.items()})
    computed = program.run(values)
    return [_require(computed.get(name), name) for name in outputs]


def _require(value: torch.Tensor | None, name: str) -> torch.Tensor:
    if value is None:
        raise InputError(f"output {name} was not computed")
    return value


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """ONNX Runtime's outputs (CPU, no graph optimisation), or None if it cannot run the case."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return list(session.run(None, inputs))
    except Exception:
        return None


def mismatch(got: torch.Tensor, expected: np.ndarray, rtol: float, atol: float) -> str | None:
    """Why `got` is not `expected` within tolerances (None if it is). Quantised outputs are float
    tensors of grid values in the twin (runtime/torch_ops.py), so values are compared, not types."""
    value = got.detach().to(torch.float64).numpy() if got.dtype == torch.bfloat16 else got.detach().numpy()
    if tuple(value.shape) != tuple(expected.shape):
        return f"shape {tuple(value.shape)} != {tuple(expected.shape)}"
    if expected.dtype.kind in "fc":
        if expected.dtype == np.float16:  # two roundings apart: fp16 kernels accumulate in their own order
            rtol = max(rtol, FP16_RTOL)
        try:
            np.testing.assert_allclose(value.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)
        except AssertionError as err:
            return str(err).strip().split("\n")[-3][:200] if "\n" in str(err) else str(err)[:200]
        return None
    if not np.array_equal(value.astype(np.float64), expected.astype(np.float64)):
        return f"values differ at {int((value.astype(np.float64) != expected.astype(np.float64)).sum())} elements"
    return None


def check(case: Any) -> CaseResult:
    """Run one case through the twin (and ONNX Runtime where the twin departs from the reference)."""
    if not is_plain(case):
        return CaseResult(case.name, "not-tensors")
    try:
        program = load(case)
    except InputError as err:
        outcome = "not-in-table" if "not in the twin's table" in str(err) else "refused"
        return CaseResult(case.name, outcome, str(err).split(": ", 1)[-1].split(". What still works")[0])
    names = [o.name for o in case.model.graph.output]
    follows_ort = False
    for inputs, expected in data_sets(case):
        try:
            got = run_twin(program, inputs, names)
        except InputError as err:
            return CaseResult(case.name, "raises", str(err)[:300])
        engine = run_ort(case.model, inputs)
        if engine is not None and _departs(engine, expected, case):
            wanted: list[np.ndarray] = [np.asarray(o) for o in engine]  # the twin stands for the engine
            follows_ort = True
        else:
            wanted = expected
        problems = [mismatch(g, w, case.rtol, case.atol) for g, w in zip(got, wanted, strict=True)]
        if any(problems):
            against = "ONNX Runtime" if follows_ort else "the reference"
            return CaseResult(case.name, "wrong", f"against {against}: {next(p for p in problems if p)}")
    return CaseResult(case.name, "follows-ort" if follows_ort else "pass")


def _departs(engine: list[np.ndarray], other: list[np.ndarray] | list[torch.Tensor], case: Any) -> bool:
    """Whether ONNX Runtime's outputs differ from `other` beyond the case's tolerances."""
    for computed, wanted in zip(engine, other, strict=True):
        reference = wanted.detach().numpy() if isinstance(wanted, torch.Tensor) else wanted
        if mismatch(to_torch(np.ascontiguousarray(computed)), reference, case.rtol, case.atol):
            return True
    return False


def tally(results: list[CaseResult]) -> Counter[str]:
    return Counter(result.outcome for result in results)
