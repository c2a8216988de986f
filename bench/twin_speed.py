"""The graph twin's forward + backward time at this checkout and at a baseline revision.

    python bench/twin_speed.py --baseline d3eac6a [--repeats 7] [--size 128x256] [--batch 4]

Exports two foreign models once (tests/foreign_models.py: a UNet CNN and a tiny HF SegFormer,
TorchScript exporter, opset 17) into a temporary folder, then times one forward and backward
pass of each graph twin on random images (median of --repeats after two warm-up passes), in a
fresh process importing harden from this checkout and one importing it from a git worktree of
the baseline, alternating --rounds times. Prints the median seconds and here ÷ baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _runs import run_at_revision

MEASURE = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from _timing import median_seconds
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.interface import ModelInterface
torch.set_num_threads(2)
out = {{}}
for name, path in {files!r}.items():
    twin = GraphTwin.from_file(path, interface=ModelInterface(input="input", output="output"))
    images = torch.rand({batch}, 3, {height}, {width}, generator=torch.Generator().manual_seed(0))

    def step():
        x = images.clone().requires_grad_(True)
        twin(x).sum().backward()

    out[name] = median_seconds(step, {repeats})
open({result!r}, "w").write(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side (medians taken)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))

    import foreign_models as fm
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        files = {
            "unet": str(fm.export(fm.UNet().eval(), work / "unet.onnx")),
            "segformer": str(fm.export(fm.tiny_segformer().eval(), work / "segformer.onnx")),
        }
        bench = str(Path(__file__).parent)
        settings = {
            "bench": bench,
            "files": files,
            "batch": args.batch,
            "height": height,
            "width": width,
            "repeats": args.repeats,
        }
        here, there = work / "here.json", work / "there.json"
        code = MEASURE.format(result=str(here), **settings)
        rounds_here: list[dict[str, float]] = []
        rounds_there: list[dict[str, float]] = []
        # both sides in a fresh process of their own, alternating, so neither inherits the exports' state
        for _ in range(args.rounds):
            subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
            run_at_revision(args.baseline, MEASURE.format(result=str(there), **settings))
            rounds_here.append(json.loads(here.read_text()))
            rounds_there.append(json.loads(there.read_text()))
        now = {name: statistics.median(r[name] for r in rounds_here) for name in files}
        before = {name: statistics.median(r[name] for r in rounds_there) for name in files}
    print(
        f"forward + backward of the graph twin, batch {args.batch} at {args.size}: median over {args.rounds} "
        f"alternating processes of the median of {args.repeats} passes"
    )
    print("| model | seconds at the baseline | seconds here | here ÷ baseline |")
    print("|---|---|---|---|")
    for name in files:
        print(f"| {name} | {before[name]:.3f} | {now[name]:.3f} | {now[name] / before[name]:.2f} |")


if __name__ == "__main__":
    main()
