"""ONNX Runtime CPU latency of the exported models with RAM off, MAS and MAS+RAD (issue 7).

Each variant is the same weights with `insert_ram_` applied, exported by `export_onnx` (MAS and
RAD run as their function bodies of standard ops: what a stock ONNX Runtime executes). Times
are medians of several runs after warm-up, interleaved round-robin over the variants so that
drifts of a noisy machine hit all of them alike, and reported as ratios to the vanilla export
measured in the same run. Targets for the demo model (segformer_tiny): MAS ≤ 1.15×,
MAS+RAD ≤ 1.5×. A second table isolates one attention block (N = 1024 tokens, 4 heads, head
dim 32: softmax(QKᵀ)V with an explicit softmax, then with MAS, then MAS+RAD), the set-up of
docs/design.md §4 where a naive RAD body measured 23×. Prints Markdown for docs/benchmarks.md.

    python bench/ort_latency.py [--size 128x256] [--threads 2] [--repeats 20] [--models a,b]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from harden.export.onnx_export import RAD_SEED, export_onnx, finish_model, harden_translations
from harden.models import create_model, list_models
from harden.ram import RAMConfig, insert_ram_

VARIANTS = {"vanilla": None, "MAS": RAMConfig(mas=True, rad=False), "MAS+RAD": RAMConfig(mas=True, rad=True)}


def sessions(name: str, size: tuple[int, int], threads: int, directory: Path) -> dict[str, ort.InferenceSession]:
    torch.manual_seed(0)
    vanilla = create_model(name, num_classes=19).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    found = {}
    for label, config in VARIANTS.items():
        model = copy.deepcopy(vanilla)
        if config is not None:
            insert_ram_(model, config)
        path = export_onnx(model.eval(), directory / f"{name}-{label}.onnx", image_size=size).path
        found[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return found


class Block(nn.Module):
    """One attention block's core: softmax (or MAS, then RAD) of q·kᵀ/√d, times v."""

    def __init__(self, mas: bool, rad: bool) -> None:
        super().__init__()
        self.mas, self.rad = mas, rad

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rad_seed: torch.Tensor) -> torch.Tensor:
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        attention = torch.ops.harden.mas(logits, 0.3) if self.mas else logits.softmax(-1)
        if self.rad:
            attention = torch.ops.harden.rad(attention, rad_seed, 0, 0.5)
        return attention @ v


def block_sessions(threads: int, directory: Path) -> tuple[dict[str, ort.InferenceSession], dict[str, np.ndarray]]:
    q, k, v = (torch.randn(1, 4, 1024, 32) for _ in range(3))
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    found = {}
    for label, (mas, rad) in {"vanilla": (False, False), "MAS": (True, False), "MAS+RAD": (True, True)}.items():
        program = torch.onnx.export(
            Block(mas, rad), (q, k, v, torch.tensor(0)), dynamo=True, opset_version=18,
            input_names=["q", "k", "v", RAD_SEED], output_names=["out"], custom_translation_table=harden_translations(),
            verbose=False,
        )  # fmt: skip
        assert program is not None
        proto = program.model_proto
        finish_model(proto)
        path = directory / f"block-{label}.onnx"
        path.write_bytes(proto.SerializeToString())
        found[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return found, feed


def measure(runs: dict[str, ort.InferenceSession], inputs: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    def feed(session: ort.InferenceSession, frame: int) -> dict[str, np.ndarray]:
        names = {i.name for i in session.get_inputs()}
        return {**inputs, **({RAD_SEED: np.array(frame)} if RAD_SEED in names else {})}

    times: dict[str, list[float]] = {label: [] for label in runs}
    for session in runs.values():  # warm-up
        for frame in range(3):
            session.run(None, feed(session, frame))
    for frame in range(repeats):
        for label, session in runs.items():
            frame_inputs = feed(session, frame)  # a fresh seed per frame, as in deployment
            start = time.perf_counter()
            session.run(None, frame_inputs)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default=",".join(m for m in list_models(has_attention=True) if "tiny" in m))
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · onnxruntime {ort.__version__} CPU · "
        f"{args.threads} threads · batch 1 · {height}×{width} · median of {args.repeats}, interleaved"
    )
    print()
    print("| model | vanilla (ms) | MAS × | MAS+RAD × |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            runs = sessions(name, (height, width), args.threads, Path(directory))
            medians = measure(runs, {"image": image}, args.repeats)
            base = medians["vanilla"]
            print(
                f"| {name} | {base * 1e3:.1f} | {medians['MAS'] / base:.2f} | {medians['MAS+RAD'] / base:.2f} |",
                flush=True,
            )
        print()
        print("| attention block (N = 1024, 4 heads, d = 32) | vanilla (ms) | MAS × | MAS+RAD × |")
        print("|---|---|---|---|")
        medians = measure(*block_sessions(args.threads, Path(directory)), args.repeats)
        base = medians["vanilla"]
        mas, both = medians["MAS"] / base, medians["MAS+RAD"] / base
        print(f"| explicit softmax | {base * 1e3:.2f} | {mas:.2f} | {both:.2f} |")


if __name__ == "__main__":
    main()
