"""SEA's strength member by member, against a baseline revision of harden, at equal budgets.

    python bench/sea_strength.py --work /tmp/sea-bench --iters 50 --baseline 61f3d13

Trains (once, into --work) a pspnet_tiny (a CNN) and a segformer_tiny (a transformer), 12 epochs
on 128 synthetic 64×128 scenes, then runs SEA at 4/255 and 8/255 on 16 validation images with
--iters iterations per member, averaged over --seeds attack seeds. For each model and ε it
prints every member's pAcc / mIoU and the worst case over the members (per image for pAcc, the
worst assignment for mIoU: harden's evaluation, the same for both sides), and the seconds SEA
took. Lower is a stronger attack.

--baseline REV measures the same with harden at git revision REV (checked out into a temporary
worktree and imported from there in a subprocess), in the same run, so the two columns share
the machine's state. The figures go to docs/attacks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _runs import harden, run_at_revision

MODELS = ("pspnet_tiny", "segformer_tiny")
EPS = (4 / 255, 8 / 255)


def train(work: Path, model: str) -> Path:
    out = work / model
    if not (out / "model.safetensors").is_file():
        size = ["--image-size", "64x128", "--train-images", "128", "--val-images", "16"]
        harden("train", "--model", model, "--epochs", "12", *size, "--no-progress", "--out", str(out))
    return out


def measure(run_dir: Path, iters: int, images: int, seeds: int = 1) -> dict[str, object]:
    """SEA on `run_dir` at every ε: {eps: {"members": {name: [pAcc, mIoU]}, "worst": [...], "seconds": s}},
    each figure the mean over `seeds` attack seeds (random starts), seconds the median."""
    import torch

    from harden.attacks.evaluate import evaluate_robustness
    from harden.data import open_dataset
    from harden.training import load_model, read_config  # not harden.run: the baseline revision may predate it

    torch.manual_seed(0)
    _, train_config = read_config(run_dir)
    model, _ = load_model(run_dir, "cpu")
    dataset = open_dataset(train_config.data, "val", size=train_config.image_size, num_images=images,
                           seed=train_config.seed)  # fmt: skip
    results: dict[str, object] = {}
    for eps in EPS:
        figures: dict[str, list[list[float]]] = {}
        times = []
        for seed in range(seeds):
            start = time.perf_counter()
            evaluation = evaluate_robustness(model, dataset, ["sea"], [eps], steps=iters, seed=seed, progress=False)
            times.append(time.perf_counter() - start)
            (run,) = [r for r in evaluation.runs if r.attack == "sea"]
            for name, w in [*run.members().items(), ("worst", run.worst())]:
                figures.setdefault(name.split("/")[-1], []).append([w.pixel_accuracy, w.miou])
        mean = {name: [statistics.fmean(v[0] for v in values), statistics.fmean(v[1] for v in values)]
                for name, values in figures.items()}  # fmt: skip
        worst = mean.pop("worst")
        results[f"{eps * 255:.0f}/255"] = {"members": mean, "worst": worst, "seconds": statistics.median(times)}
    return results


def measure_all(work: Path, iters: int, images: int, seeds: int) -> dict[str, object]:
    return {model: measure(work / model, iters, images, seeds) for model in MODELS}


def baseline(rev: str, work: Path, iters: int, images: int, seeds: int) -> dict[str, object]:
    """`measure_all` with harden imported from a worktree of `rev`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        run_at_revision(rev, f"import json; from pathlib import Path; from sea_strength import measure_all; "
                             f"json.dump(measure_all(Path({str(work)!r}), {iters}, {images}, {seeds}), "
                             f"open({str(out)!r}, 'w'))")  # fmt: skip
        return json.loads(out.read_text())


def _cell(result: dict, member: str) -> str:
    if member == "seconds":
        return f"{result['seconds']:.1f} s"
    acc, miou = result["worst"] if member == "worst" else result["members"][member]
    return f"{acc:.3f} / {miou:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sea-bench"))
    parser.add_argument("--iters", type=int, default=50, help="iterations per SEA member (the paper: 300)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=1, help="attack seeds to average each figure over")
    parser.add_argument("--baseline", default=None, help="a git revision to compare with (e.g. HEAD~3)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        train(args.work, model)
    old = baseline(args.baseline, args.work, args.iters, args.images, args.seeds) if args.baseline else None
    new = measure_all(args.work, args.iters, args.images, args.seeds)
    print(
        f"SEA, {args.iters} iterations per member, {args.images} images, mean over {args.seeds} attack seed(s); "
        "pAcc / mIoU (lower: stronger); seconds: median per run"
    )
    sides = ([("baseline " + args.baseline, old)] if old else []) + [("this tree", new)]
    print(f"{'model':<16}{'ε':<7}{'member':<10}" + "".join(f"{name:>20}" for name, _ in sides))
    for model in MODELS:
        for eps in new[model]:  # type: ignore[attr-defined]
            results = [side[model][eps] for _, side in sides]  # type: ignore[index]
            for member in [*results[-1]["members"], "worst", "seconds"]:
                cells = [_cell(r, member) for r in results]
                print(f"{model:<16}{eps:<7}{member:<10}" + "".join(f"{c:>20}" for c in cells))
    print(json.dumps({"baseline": old, "this_tree": new}))


if __name__ == "__main__":
    main()
