"""harden's `strongest` preset against the public reference ensemble, member by member.

    python bench/attack_strength.py --work /tmp/strength --iters 100 \\
        --rse /path/to/szegedai/Robust-Segmentation-Evaluation \\
        --croce /path/to/nmndeep/Robust-Segmentation

The reference ensemble is the one the issue measured: Croce et al.'s SEA protocol
(nmndeep/Robust-Segmentation `semseg/attacker.py`: red-ε APGD on mask-ce-bal, mask-ce-avg,
js-avg), the four-loss SEA of Halmosi et al. (szegedai/Robust-Segmentation-Evaluation
`rse/_sea.py`: APGD on mask-ce-avg, segpgd-loss, js-avg, mask-norm-corrlog-avg) and their PAdam-CE
and PAdam-Cos (`rse/attacks.py`) — 9 members. Their code is imported from the checkouts given (no
copy here); both import git-only packages (adv_lib, autoattack) for parts this bench does not run,
so those modules are stubbed with placeholders that raise if called. Every member gets --iters
iterations (equal budgets; the papers use 300 for APGD and 200 for PAdam). Croce's mask-ce-bal
takes a per-dataset class-weight vector (VOC_WTS, ADE_WTS there): here the inverse pixel
frequency of each class over the model's training labels, normalised to sum 1, as those are.

Both sides are scored by one evaluation: each member's adversarial images predicted by the
model, per-image counts, and harden's worst case (per image for pAcc, the greedy assignment
for mIoU). Seconds are the crafting time of each side over all images (median of --rounds).
--seed sets both sides' random starts: run several to see how much of a gap is the seed's.
Models: a pspnet_tiny and a segformer_tiny trained 12 epochs on 128 synthetic 64×128 scenes
(trained once into --work), evaluated on --images validation images at 4/255 and 8/255.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from sea_strength import MODELS, train

from harden.attacks import ThreatModel, create_attack
from harden.attacks.worst_case import ImageCounts, worst_case
from harden.data import collate_pad, open_dataset
from harden.data.classes import IGNORE_INDEX
from harden.run import load_model, read_config

EPS = (4 / 255, 8 / 255)
Member = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _placeholder(name: str) -> Callable[..., None]:
    def called(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{name} is a placeholder of bench/attack_strength.py; the bench does not run it")

    return called


def _stub(module: str, **names: object) -> None:
    """Put a placeholder `module` (and its parents) in sys.modules unless the real one imports."""
    try:
        importlib.import_module(module)
        return
    except Exception:  # any import failure: the git-only dependency is absent
        pass
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        stub = sys.modules.setdefault(name, types.ModuleType(name))
        stub.__path__ = []  # type: ignore[attr-defined]
    for key, value in names.items():
        setattr(sys.modules[module], key, value)


class _SilentLogger:
    def __init__(self, path: object = None) -> None:
        pass

    def log(self, *args: object) -> None:
        pass


def reference_members(
    rse: Path, croce: Path, num_classes: int, weights: torch.Tensor, eps: float, iters: int
) -> dict[str, Member]:
    """The 9 reference members at `eps` with `iters` iterations each, from the checkouts."""
    _stub(
        "adv_lib.attacks.segmentation",
        alma_prox=_placeholder("alma_prox"),
        pdpgd=_placeholder("pdpgd"),
        dag=_placeholder("dag"),
    )
    _stub(
        "autoattack.other_utils",
        Logger=_SilentLogger,
        L0_norm=_placeholder("L0_norm"),
        L1_norm=_placeholder("L1_norm"),
        L2_norm=_placeholder("L2_norm"),
    )
    sys.path.insert(0, str(rse))
    import rse as halmosi  # type: ignore[import-not-found]

    spec = importlib.util.spec_from_file_location("croce_attacker", croce / "semseg" / "attacker.py")
    assert spec is not None and spec.loader is not None
    croce_attacker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(croce_attacker)

    def croce_sea(loss: str) -> Member:
        def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            adversarial, _, _ = croce_attacker.apgd_largereps(
                model,
                x,
                y,
                weights,
                norm="Linf",
                eps=eps,
                n_iter=iters,
                n_restarts=1,
                use_rs=True,
                loss=loss,
                track_loss="ce-avg",
                num_classes=num_classes,
                early_stop=True,
            )
            return adversarial

        return run

    def halmosi_sea(loss: str, track: str) -> Member:
        return partial(halmosi.apgd, n_iter=iters, n_restarts=1, use_rs=True, loss=loss, track_loss=track, eps=eps)

    def cosine(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(z, F.one_hot(y, num_classes).movedim(-1, 1))

    padam = partial(halmosi.padam, eps=eps, step_size=2 / 255, num_steps=iters)
    return {
        "croce/mask-ce-bal": croce_sea("mask-ce-bal"),
        "croce/mask-ce-avg": croce_sea("mask-ce-avg"),
        "croce/js-avg": croce_sea("js-avg"),
        "halmosi/mask-ce-avg": halmosi_sea("mask-ce-avg", "ce-avg"),
        "halmosi/segpgd-loss": halmosi_sea("segpgd-loss", "ce-avg"),
        "halmosi/js-avg": halmosi_sea("js-avg", "ce-avg"),
        "halmosi/mask-norm-corrlog-avg": halmosi_sea("mask-norm-corrlog-avg", "mask-norm-corrlog-avg"),
        "halmosi/padam-ce": partial(padam, loss_fn=partial(F.cross_entropy, reduction="none")),
        "halmosi/padam-cos": partial(padam, loss_fn=cosine),
    }


def class_weights(run_dir: Path) -> torch.Tensor:
    """Inverse pixel frequency of each class over the training labels, normalised to sum 1."""
    _, config = read_config(run_dir)
    dataset = open_dataset(
        config.data, "train", size=config.image_size, num_images=config.train_images, seed=config.seed
    )
    counts = torch.zeros(dataset.num_classes)
    for i in range(len(dataset)):
        labels = dataset[i][1]
        labels = labels[labels != IGNORE_INDEX]
        counts += torch.bincount(labels.flatten(), minlength=dataset.num_classes).float()
    inverse = 1 / counts.clamp_min(1)
    return inverse / inverse.sum()


def score(
    members: dict[str, list[torch.Tensor]], model: nn.Module, labels: list[torch.Tensor], num_classes: int
) -> dict[str, list[float]]:
    """Each member's (pAcc, mIoU) and the worst case over the members, by one evaluation."""
    counts: dict[str, ImageCounts] = {}
    with torch.no_grad():
        for name, batches in members.items():
            counts[name] = ImageCounts.empty(num_classes)
            for images, y in zip(batches, labels, strict=True):
                counts[name] = counts[name].extend(
                    ImageCounts.from_predictions(model(images).argmax(1), y, num_classes)
                )
    figures = {name: [c.scores()[1], c.scores()[0]] for name, c in counts.items()}
    worst = worst_case(list(counts.values()))
    figures["worst"] = [worst.pixel_accuracy, worst.miou]
    return figures


def craft(
    side: dict[str, Member] | str,
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    eps: float,
    iters: int,
    seed: int,
) -> tuple[dict[str, list[torch.Tensor]], float]:
    """Every member's adversarial images of every batch, and the seconds crafting took."""
    out: dict[str, list[torch.Tensor]] = {}
    start = time.perf_counter()
    for images, labels in batches:
        if isinstance(side, str):  # a harden attack
            attack = create_attack(side, ThreatModel(eps), steps=iters, seed=seed)
            produced = {name: o.images for name, o in attack.run_members(model, images, labels).items()}
        else:
            torch.manual_seed(seed)
            reference_labels = labels.masked_fill(labels == IGNORE_INDEX, -1)
            produced = {name: member(model, images, reference_labels).detach() for name, member in side.items()}
        for name, adversarial in produced.items():
            assert (adversarial - images).abs().max() <= eps + 1e-6, f"{name} left the ε-ball"
            out.setdefault(name, []).append(adversarial)
    return out, time.perf_counter() - start


def measure(args: argparse.Namespace, model_name: str) -> dict[str, object]:
    run_dir = args.work / model_name
    torch.manual_seed(0)
    _, config = read_config(run_dir)
    model, _ = load_model(run_dir, "cpu")
    model.eval()
    dataset = open_dataset(config.data, "val", size=config.image_size, num_images=args.images, seed=config.seed)
    batches = [collate_pad([dataset[i] for i in range(j, min(j + 8, len(dataset)))]) for j in range(0, len(dataset), 8)]
    labels = [y for _, y in batches]
    weights = class_weights(run_dir)
    results: dict[str, object] = {}
    for eps in args.eps:
        reference = reference_members(args.rse, args.croce, dataset.num_classes, weights, eps, args.iters)
        row: dict[str, object] = {}
        for side_name, side in (("reference", reference), ("harden strongest", "strongest")):
            times, figures = [], {}
            for _ in range(args.rounds):
                crafted, seconds = craft(side, model, batches, eps, args.iters, seed=args.seed)
                times.append(seconds)
                figures = score(crafted, model, labels, dataset.num_classes)
            row[side_name] = {"figures": figures, "seconds": statistics.median(times)}
        results[f"{eps * 255:.0f}/255"] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/strength"))
    parser.add_argument("--rse", type=Path, required=True, help="a checkout of szegedai/Robust-Segmentation-Evaluation")
    parser.add_argument("--croce", type=Path, required=True, help="a checkout of nmndeep/Robust-Segmentation")
    parser.add_argument("--iters", type=int, default=100, help="iterations of every member, both sides")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each side; seconds are the median")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0, help="the attacks' seed, both sides (random starts, PAdam)")
    parser.add_argument(
        "--eps",
        type=lambda text: [int(v) / 255 for v in text.split(",")],
        default=list(EPS),
        help="radii in 1/255 steps, e.g. 4,8",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for model_name in args.models.split(","):
        train(args.work, model_name)
        results[model_name] = measure(args, model_name)
        for eps, row in results[model_name].items():  # type: ignore[attr-defined]
            print(f"\n{model_name} at {eps}, {args.iters} iterations per member, {args.images} images; pAcc / mIoU")
            for side_name, side in row.items():
                print(f"  {side_name}: {side['seconds']:.1f} s")
                for member, (acc, miou) in side["figures"].items():
                    print(f"    {member:<32}{acc:.4f} / {miou:.4f}")
            ratio = row["harden strongest"]["seconds"] / row["reference"]["seconds"]
            print(f"  time, harden ÷ reference: {ratio:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
