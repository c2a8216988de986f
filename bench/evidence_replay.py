"""The evidence set's size and `harden replay`'s cost, against its floor.

For a model (a small segformer_tiny with RAM, as `harden demo` trains, or segformer_b0) exported
to ONNX, at a given image size: builds the evidence set verify would store for N synthetic
scenes (clean images, and per ε an adversarial image at the ε-ball's corners — sign noise, the
least compressible an attack leaves — with the engine's class maps in every RAD draw), then
replays it on the same file. Prints:

- the evidence size: bytes per image and for 100 images (what `harden verify` would keep);
- replay's wall time ÷ (engine predictions × the median time of one engine forward of one
  image, measured alone): the floor is 1.0, batching can take it below.

    python bench/evidence_replay.py                                  # segformer_tiny+RAM, 64×64, 16 images
    python bench/evidence_replay.py --model segformer_b0 --no-ram --size 512x1024 --images 8

Record the output in docs/benchmarks.md with the command and the date.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from click.testing import CliRunner

from harden.cli import cli
from harden.data import open_dataset
from harden.runtime.engines import open_engine
from harden.runtime.evidence import EvidenceWriter, WorstImages, open_evidence
from harden.runtime.replay import replay
from harden.runtime.twins import open_deployment

DRAW_SEED = 10_000


def _cli(*args: object) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_tiny")
    parser.add_argument("--no-ram", action="store_true", help="export the model without MAS/RAD")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eps", default="4/255,8/255")
    parser.add_argument("--profile", action="store_true", help="print where replay spends its time")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    eps_values = [float(a) / float(b) for a, b in (e.split("/") for e in args.eps.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        run, export = Path(tmp) / "run", Path(tmp) / "export"
        ram = [] if args.no_ram else ["--ram"]
        _cli("train", "--model", args.model, *ram, "--epochs", "1", "--image-size", "64x64", "--train-images", "4",
             "--val-images", "1", "--batch-size", "2", "--no-progress", "--out", run)  # fmt: skip
        _cli("export", run, "--out", export, "--parity-images", "1")
        deployment = open_deployment(export)
        data = open_dataset("synthetic", "val", size=(height, width), num_images=args.images, seed=0)
        with open_engine(deployment.artefact, "cpu", deployment.interface) as engine:
            draws = 2 if engine.takes_seed else 1
            writer = EvidenceWriter(Path(tmp) / "evidence", eps_values, data.num_classes)
            writer.start()
            generator = torch.Generator().manual_seed(0)
            first_ids = []
            for start in range(0, args.images, args.batch):
                ids = torch.arange(start, min(start + args.batch, args.images))
                clean = torch.stack([data[int(i)][0] for i in ids])
                labels = torch.stack([data[int(i)][1] for i in ids])
                worst = {}
                for eps in eps_values:
                    sign = torch.randint(0, 2, clean.shape, generator=generator).float() * 2 - 1
                    worst[eps] = WorstImages((clean + eps * sign).clamp(0, 1), ["sign noise"] * len(ids))

                def predict(images: torch.Tensor, draw: int) -> torch.Tensor:
                    return engine.logits(images, DRAW_SEED + draw).argmax(1)

                writer.add_batch(predict, draws, ids, clean, labels, worst)
                first_ids.append(start)
            writer.finish(first_ids, draws, {"artefact": deployment.artefact.name, "engine": engine.name,
                                             "precision": deployment.precision, "files": {}},
                          list(data.class_names), {"source": "synthetic", "num_classes": data.num_classes, "images": [],
                                                   "calibration": {"disjoint": None}})  # fmt: skip
            size = sum(p.stat().st_size for p in (Path(tmp) / "evidence").iterdir())
            one = clean[:1]
            forward = []
            for _ in range(7):
                started = time.perf_counter()
                engine.logits(one, DRAW_SEED)
                forward.append(time.perf_counter() - started)
            evidence = open_evidence(Path(tmp) / "evidence")
            started = time.perf_counter()
            result = replay(evidence, deployment, engine, log=lambda _: None)
            wall = time.perf_counter() - started
        floor = result.forwards * statistics.median(forward[2:])
        per_image = size / args.images
        print(f"model {args.model}{'' if args.no_ram else ' + RAM'}, {height}×{width}, {args.images} images, "
              f"{len(eps_values)} ε, {draws} draw(s), batch {args.batch}")  # fmt: skip
        raw = _raw_bytes(height, width, len(eps_values), draws)
        print(f"evidence: {per_image / 2**20:.2f} MB per image → {per_image * 100 / 2**20:.0f} MB for 100 images "
              f"(uint8 raw would be {raw / 2**20:.2f} MB per image)")  # fmt: skip
        one_forward = statistics.median(forward[2:])
        print(f"replay: {wall:.2f} s for {result.forwards} engine predictions (inside: "
              f"{result.seconds['engine_inference']:.2f} s); one forward {one_forward:.4f} s; "
              f"replay ÷ floor = {wall / floor:.2f}")  # fmt: skip
        if args.profile:
            import cProfile
            import pstats

            with open_engine(deployment.artefact, "cpu", deployment.interface) as engine:
                profiler = cProfile.Profile()
                profiler.enable()
                replay(evidence, deployment, engine, log=lambda _: None)
                profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def _raw_bytes(height: int, width: int, eps_count: int, draws: int) -> int:
    pixels = height * width
    return pixels * (3 + 1 + draws) + eps_count * pixels * (3 + draws)


if __name__ == "__main__":
    main()
