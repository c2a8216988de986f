"""int8 weight range vs engine arithmetic: which remedy keeps ONNX Runtime's kernels on this CPU
faithful to the file, and what 7-bit weights cost in parity with PyTorch.

For each weight range ("reduced": 7-bit, ONNX Runtime's reduce_range; "full": 8-bit) the run is
exported to int8 and measured on validation images:
- parity: PyTorch vs the file as written (ONNX Runtime, graph optimisations off): argmax
  agreement and mIoU change — what quantisation itself costs;
- engine arithmetic: ONNX Runtime's default session (fused int8 kernels, this CPU) vs the same
  file as written — what this CPU's kernels change (int16 saturation without VNNI);
- the file's int8 weights beyond ±64 (those can saturate a u8s8 pair sum on a non-VNNI CPU).

    python bench/int8_arithmetic.py [RUN_DIR] [--images 16]

Without RUN_DIR a segformer_tiny with RAM is trained for 12 epochs on 64×128 synthetic scenes
first (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import harden, small_ram_run

from harden.export.arithmetic import cpu_int8, int8_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--images", type=int, default=16, help="parity / arithmetic images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harden-bench-") as scratch:
        run = args.run_dir
        if run is None:
            run = small_ram_run(Path(scratch) / "run", args.images)
        print(f"CPU: {cpu_int8().describe()}")
        print(f"{'weights':<8} {'parity agree':>12} {'ΔmIoU':>7} {'engine agree':>12} {'max|Δ|':>8} {'beyond ±64':>10}")
        for weights in ("reduced", "full"):
            out = Path(scratch) / weights
            harden("export", str(run), "--out", str(out), "--precision", "int8", "--int8-weights", weights,
                   "--parity-images", str(args.images))  # fmt: skip
            parity = json.loads((out / "parity.json").read_text())["int8"]
            manifest = json.loads((out / "manifest.json").read_text())
            engine = manifest["engine_arithmetic"]["int8"]["comparison"]
            found = int8_weights(onnx.load(str(out / "model.int8.onnx")))
            print(
                f"{weights:<8} {parity['argmax_agreement']:>12.4%} {parity['miou_change']:>7.4f} "
                f"{engine['argmax_agreement']:>12.4%} {engine['max_abs_diff']:>8.3g} "
                f"{found.beyond:>4} of {found.tensors:<3}"
            )


if __name__ == "__main__":
    main()
