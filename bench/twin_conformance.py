"""Tally of the graph twin on ONNX's node conformance cases, optionally beside onnx2torch's.

    python bench/twin_conformance.py                         # the twin: outcomes, and gradient checks
    python bench/twin_conformance.py --onnx2torch DIR        # and onnx2torch, unpacked into DIR
    python bench/twin_conformance.py --list wrong,raises     # name the cases with those outcomes

onnx2torch depends on torchvision (for NonMaxSuppression and RoiAlign only), which has no CPU
build here: unpack its wheel (`pip download onnx2torch==1.5.15 --no-deps -d W && unzip
W/*.whl -d DIR`) and this script stubs torchvision, so those two ops fail for it. Both sides run
the same cases with the same comparison (`harden.runtime.conformance.mismatch`, the case's own
tolerances); onnx2torch is judged against the reference only.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harden.runtime import conformance


def onnx2torch_outcome(convert: Any, case: Any) -> str:
    """pass / wrong / fails (cannot convert or run) for onnx2torch on one case."""
    try:
        module = convert(case.model)
        for inputs, expected in conformance.data_sets(case):
            with torch.no_grad():
                got = module(*[torch.from_numpy(np.ascontiguousarray(array)) for array in inputs.values()])
            outputs = [got] if isinstance(got, torch.Tensor) else list(got)
            if len(outputs) != len(expected) or any(
                not isinstance(g, torch.Tensor) or conformance.mismatch(g, e, case.rtol, case.atol)
                for g, e in zip(outputs, expected, strict=False)
            ):
                return "wrong"
    except Exception:  # any failure to convert or run the case
        return "fails"
    return "pass"


def _load_onnx2torch(path: Path) -> Any:
    stub = types.ModuleType("torchvision")
    stub.ops = types.SimpleNamespace(roi_align=None, nms=None, box_convert=None)  # type: ignore[attr-defined]
    sys.modules.setdefault("torchvision", stub)
    sys.modules.setdefault("torchvision.ops", stub.ops)  # type: ignore[arg-type]
    sys.path.insert(0, str(path))
    from onnx2torch import convert

    return convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx2torch", type=Path, help="a directory holding the unpacked onnx2torch package")
    parser.add_argument("--list", default="", help="comma-separated outcomes whose cases to name")
    args = parser.parse_args()

    import onnx
    import onnxruntime

    start = time.perf_counter()
    cases = conformance.node_cases()
    collected = time.perf_counter()
    results = [conformance.check(case) for case in cases]
    checked = time.perf_counter()
    tally = conformance.tally(results)
    ran = {r.name for r in results if r.outcome in ("pass", "follows-ort")}
    gradients: Counter[str] = Counter()
    for case in cases:
        if case.name in ran:
            verdict = conformance.gradient_check(case)
            gradients["agree" if verdict is None else "skip" if verdict.startswith("skip") else "disagree"] += 1
    done = time.perf_counter()
    plain = sum(1 for case in cases if conformance.is_plain(case))
    print(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")
    print(
        f"{len(cases)} node cases, {plain} with plain tensors; collect {collected - start:.1f} s, "
        f"check {checked - collected:.1f} s, gradients {done - checked:.1f} s"
    )
    print("graph twin:", ", ".join(f"{k} {tally[k]}" for k in conformance.OUTCOMES))
    print("gradients of the cases it runs:", dict(gradients))
    follows = [r.name for r in results if r.outcome == "follows-ort"]
    print(f"follows ONNX Runtime where it departs from the reference ({len(follows)}):", ", ".join(follows))
    for outcome in filter(None, args.list.split(",")):
        for result in results:
            if result.outcome == outcome:
                print(f"  {outcome}: {result.name}: {result.detail[:200]}")
    if args.onnx2torch:
        convert = _load_onnx2torch(args.onnx2torch)
        theirs = Counter(onnx2torch_outcome(convert, case) for case in cases if conformance.is_plain(case))
        print("onnx2torch on the same plain-tensor cases:", dict(theirs))


if __name__ == "__main__":
    main()
