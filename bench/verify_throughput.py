"""Throughput of a verification run, and where its time goes, per model and image size.

A verify run per image is: clean parity (engine + twin forward), PGD-10 crafted on the graph
twin (10 forward+backward passes and the attack's own bookkeeping), its images predicted by the
engine, and Square-100 on the engine (100 engine queries). This script times each part on a
model exported from the registry (random weights: time does not depend on them), composes
images/s, and compares one PGD step on the twin with a plain forward + cross-entropy +
backward to the input of the same module in the same run (the target is ≤ 1.1×: the attack adds
its per-pixel loss, the gradient checks and the projection, nothing heavy). Medians of several
repeats; these machines are noisy.

    python bench/verify_throughput.py --models segformer_b0,pspnet_r50 --size 256x512 --images 1
    python bench/verify_throughput.py --size 512x1024 --device cuda     # on a GPU machine

On CPU the twin runs on torch's CPU kernels and the engine is ONNX Runtime's CPU provider; with
--device cuda the twin runs on the GPU and the engine on ONNX Runtime's CUDA provider when
onnxruntime-gpu is installed (else the CPU provider, said in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds

from harden.attacks import ThreatModel, create_attack
from harden.devices import resolve_device
from harden.export.onnx_export import export_onnx
from harden.models import create_model
from harden.runtime.engines import EngineModule, OnnxRuntimeEngine
from harden.runtime.graph_twin import GraphTwin


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str, size: tuple[int, int], images: int, device: torch.device, repeats: int, queries: int
) -> dict[str, Any]:
    model = create_model(name, num_classes=19).eval()
    x = torch.rand(images, 3, *size)
    labels = torch.randint(0, 19, (images, *size))
    with tempfile.TemporaryDirectory(prefix="harden-bench-") as scratch:
        path = Path(scratch) / "model.onnx"
        export_onnx(model, path, size)
        twin = GraphTwin.from_file(path).eval().to(device)
        provider = "cuda" if device.type == "cuda" else "cpu"
        try:
            engine = OnnxRuntimeEngine(path, str(device) if provider == "cuda" else "cpu").__enter__()
        except Exception:  # no onnxruntime-gpu: say so, measure the CPU provider
            provider = "cpu (onnxruntime-gpu missing)"
            engine = OnnxRuntimeEngine(path, "cpu").__enter__()
        xd, ld = x.to(device), labels.to(device)

        def plain_step() -> None:  # the least an attack step must do: forward, CE, gradient to the input
            image = xd.clone().requires_grad_(True)
            F.cross_entropy(twin(image).float(), ld).backward()
            _sync(device)

        def twin_forward() -> None:
            with torch.no_grad():
                twin(xd)
            _sync(device)

        steps = 10
        pgd = create_attack("pgd", ThreatModel(8 / 255), steps=steps)

        def pgd_run() -> None:
            pgd(twin, xd, ld)
            _sync(device)

        def engine_forward() -> None:
            engine.logits(x)

        square = create_attack("square", ThreatModel(8 / 255), steps=queries)
        engine_module = EngineModule(engine)

        def square_run() -> None:
            square(engine_module, x, labels)

        timings = {
            "plain forward+backward": median_seconds(plain_step, repeats, warmup=1),
            "twin forward": median_seconds(twin_forward, repeats, warmup=1),
            "PGD-10 on the twin": median_seconds(pgd_run, max(1, repeats // 2), warmup=1),
            "engine forward": median_seconds(engine_forward, repeats, warmup=1),
            "Square on the engine": median_seconds(square_run, 1, warmup=0),
        }
        engine.__exit__(None, None, None)
    step = timings["PGD-10 on the twin"] / steps
    split = {
        "twin forward+backward (10 PGD steps)": steps * timings["plain forward+backward"],
        "attack bookkeeping (loss, projection)": max(
            0.0, timings["PGD-10 on the twin"] - steps * timings["plain forward+backward"]
        ),
        "engine (parity + PGD images + Square queries)": (2 + queries) * timings["engine forward"],
        "Square bookkeeping": max(0.0, timings["Square on the engine"] - queries * timings["engine forward"]),
        "twin forward (parity)": timings["twin forward"],
    }
    total = sum(split.values())
    return {
        "model": name, "size": list(size), "images": images, "device": str(device), "engine_provider": provider,
        "queries": queries, "timings_s": timings, "split_s": split, "seconds_per_batch": total,
        "images_per_s": images / total,
        "pgd_step_over_plain_forward_backward": step / timings["plain forward+backward"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="segformer_b0,pspnet_r50")
    parser.add_argument("--size", default="256x512", help="HxW")
    parser.add_argument("--images", type=int, default=1, help="images per batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--queries", type=int, default=100, help="Square's queries (engine time scales with it)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    device = resolve_device(args.device)
    results = []
    for name in args.models.split(","):
        start = time.perf_counter()
        result = measure(name.strip(), (height, width), args.images, device, args.repeats, args.queries)
        results.append(result)
        print(f"\n{name} at {height}x{width}, batch {args.images}, {device} (engine: {result['engine_provider']}); "
              f"measured in {time.perf_counter() - start:.0f} s")  # fmt: skip
        for part, seconds in result["split_s"].items():
            print(f"  {part:<48} {seconds:8.3f} s  {seconds / result['seconds_per_batch']:6.1%}")
        print(f"  {f'verify (PGD-10 + Square-{args.queries} + parity)':<48} {result['seconds_per_batch']:8.3f} s  "
              f"→ {result['images_per_s']:.3f} images/s")  # fmt: skip
        ratio = result["pgd_step_over_plain_forward_backward"]
        print(f"  one PGD step / plain forward+backward of the twin: {ratio:.3f}×")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
