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


def _departs(engine: list[np.ndarray], other: list[np.ndarray], case: Any) -> bool:
    """Whether ONNX Runtime's outputs differ from `other` beyond the case's tolerances."""
    for computed, wanted in zip(engine, other, strict=True):
        if mismatch(to_torch(np.asarray(computed)), wanted, case.rtol, case.atol):
            return True
    return False


def tally(results: list[CaseResult]) -> Counter[str]:
    return Counter(result.outcome for result in results)


STRAIGHT_THROUGH = {"QuantizeLinear", "DynamicQuantizeLinear"}  # the twin's gradient is the STE's by design


def gradient_check(case: Any, seed: int = 0) -> str | None:
    """Compare the twin's directional derivative with ONNX Runtime's finite differences.

    Along the case's first input x (the data an attack moves; the others are weights, scales,
    bounds), for a random direction v and random output weights w: the twin's ⟨∇(w·f)(x), v⟩
    against ONNX Runtime's (w·f(x + hv) − w·f(x − hv)) / 2h. Where the forward and backward
    one-sided differences disagree, a kink, tie or jump lies under the step and the check does
    not apply. Returns None if they agree, "skip: …" where the check does not apply (no float
    data input or output, a kink, a straight-through op), or why they disagree.
    """
    if not is_plain(case) or any(node.op_type in STRAIGHT_THROUGH for node in case.model.graph.node):
        return "skip: not a float case with an ordinary gradient"
    inputs, _ = next(data_sets(case))
    first = next(iter(inputs), None)
    floats = (
        [first] if first is not None and inputs[first].dtype in (np.float32, np.float64) and inputs[first].size else []
    )
    names = [o.name for o in case.model.graph.output]
    program = load(case)
    leaves = {name: to_torch(array).requires_grad_(name in floats) for name, array in inputs.items()}
    values: dict[str, torch.Tensor | None] = dict(program.constants)
    values.update(leaves)
    outputs = [program.run(values)[name] for name in names]
    differentiable = [i for i, o in enumerate(outputs) if o is not None and o.is_floating_point() and o.requires_grad]
    if not floats or not differentiable:
        return "skip: no float input reaches a float output"
    rng = np.random.default_rng(seed)
    direction = {name: rng.standard_normal(inputs[name].shape).astype(inputs[name].dtype) for name in floats}
    weights = {}
    for i in differentiable:  # infinities and sentinels (a masked score written as the lowest float) carry no slope
        value = _require(outputs[i], names[i]).detach().double().numpy()
        weights[i] = np.where(np.abs(value) < 1e30, rng.standard_normal(value.shape), 0.0)
    loss = sum((_require(outputs[i], names[i]).double() * torch.from_numpy(weights[i])).sum() for i in differentiable)
    assert isinstance(loss, torch.Tensor)
    grads = torch.autograd.grad(loss, [leaves[name] for name in floats], allow_unused=True)
    twin = sum(
        float((g.double() * torch.from_numpy(direction[n]).double()).sum())
        for g, n in zip(grads, floats, strict=True)
        if g is not None
    )
    session = _session(case.model)
    try:
        session.run(None, inputs)
    except Exception:
        return "skip: ONNX Runtime cannot run the case"

    def weighted(step: float) -> float:
        moved = {n: np.asarray(a + step * direction[n], a.dtype) if n in floats else a for n, a in inputs.items()}
        results = session.run(None, moved)
        with np.errstate(all="ignore"):  # inf − inf in a case that produces infinities: not finite, skipped below
            return float(sum((np.asarray(results[i], np.float64) * weights[i]).sum() for i in differentiable))

    step = 5e-3 * max(1.0, max(float(np.abs(inputs[n]).max()) for n in floats))
    here = weighted(0.0)
    ahead, behind = weighted(step), weighted(-step)
    near_ahead, near_behind = weighted(step / 2), weighted(-step / 2)
    bend = (ahead - here) / step - (here - behind) / step  # ≈ f''·h where smooth; a kink's stays as h halves
    near_bend = (near_ahead - here) / (step / 2) - (here - near_behind) / (step / 2)
    wide, central = (ahead - behind) / (2 * step), (near_ahead - near_behind) / step
    noise = 1e-3 + 0.02 * max(abs(central), 1e-2)
    kink = abs(bend) > noise and abs(near_bend) > 0.6 * abs(bend)
    jump = abs(central - wide) > noise  # a jump's difference doubles as the step halves
    if not np.isfinite([wide, central, bend, near_bend]).all() or kink or jump:
        return "skip: not smooth under the step (a kink, a tie or a jump)"
    if abs(twin - central) > 0.03 * max(abs(central), abs(twin)) + 1e-3:
        return f"directional derivative {twin:.6g} in the twin, {central:.6g} by ONNX Runtime's finite difference"
    return None


def _session(model: onnx.ModelProto) -> Any:
    """An ONNX Runtime session without graph optimisation (None where it cannot load the case)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:
        return None
