"""Robustness evaluation: clean vs adversarial pAcc and mIoU per attack and ε, and worst cases.

For every batch, ε and attack, the attack's candidates (one per member; SEA has four) are
crafted on the source model (the evaluated model itself, or another one for a transfer attack)
and predicted by the evaluated model. A randomised model (RAD) is predicted over several fixed
draws, and every (candidate, draw) pair is a candidate of the worst case: the robustness of a
random model is what its unluckiest draw gives the attacker (docs/design.md §6).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from harden.attacks._registry import ATTACKS, create_attack
from harden.attacks.base import GradientStats, draws_default, is_randomised
from harden.attacks.threat import ThreatModel
from harden.attacks.worst_case import ImageCounts, LowestPerImage, WorstCase, worst_case
from harden.data import SegmentationDataset, collate_pad
from harden.ram import fixed_rad_seed

DRAW_SEED = 10_000  # evaluation draws use RAD seeds DRAW_SEED + d, apart from the attacks' own


@dataclass
class AttackRun:
    """One attack at one ε over the dataset."""

    attack: str
    eps: float
    kind: str  # "white-box", "black-box" or "transfer"
    candidates: dict[str, ImageCounts]  # "member@draw" → counts
    gradients: GradientStats = field(default_factory=GradientStats)
    seconds: float = 0.0
    crafted_on: str = ""  # the model the attack differentiated or queried, when not the evaluated one

    def add(self, key: str, predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ImageCounts:
        """Append a batch's per-image counts of the candidate `key` ("member@draw"); returns them."""
        counts = ImageCounts.from_predictions(predictions, labels, num_classes)
        self.candidates[key] = self.candidates.get(key, ImageCounts.empty(num_classes)).extend(counts)
        return counts

    def worst(self) -> WorstCase:
        return worst_case(list(self.candidates.values()))

    def members(self) -> dict[str, WorstCase]:
        """Each member's own worst case over the draws (SEA's four losses, for instance)."""
        names = sorted({key.rsplit("@", 1)[0] for key in self.candidates})
        return {n: worst_case([c for k, c in self.candidates.items() if k.rsplit("@", 1)[0] == n]) for n in names}


@dataclass
class Evaluation:
    num_classes: int
    images: int
    draws: int
    clean: list[ImageCounts]  # one per draw
    runs: list[AttackRun]
    examples: dict[str, torch.Tensor]  # "images", "labels" and "attack@eps" → adversarial images (first few)

    def clean_scores(self) -> tuple[float, float]:
        """(mIoU, pAcc) of clean images, averaged over the draws."""
        scores = [c.scores() for c in self.clean]
        return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)

    def eps_values(self) -> list[float]:
        return sorted({run.eps for run in self.runs})

    def worst_at(self, eps: float, kinds: tuple[str, ...] = ("white-box", "black-box", "transfer")) -> WorstCase | None:
        candidates = [c for r in self.runs if r.eps == eps and r.kind in kinds for c in r.candidates.values()]
        return worst_case(candidates) if candidates else None


def evaluate_robustness(
    model: nn.Module,
    dataset: SegmentationDataset,
    attacks: list[str],
    eps_values: list[float],
    *,
    steps: int | None = None,
    eot: int = 1,
    allow_random: bool = False,
    seed: int = 0,
    draws: int | None = None,
    source: nn.Module | None = None,
    surrogates: dict[str, nn.Module] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    examples: int = 4,
    progress: bool = True,
) -> Evaluation:
    """Attack `model` (or craft on `source` and transfer to `model`) on every image of `dataset`.

    Args:
        attacks: registry names; "noise" is always added as the black-box floor of the checks.
        eps_values: L∞ radii (bim-l2 uses each as its L2 radius).
        steps, eot, allow_random, seed: passed to every attack.
        draws: evaluation draws of a randomised model (None: 3 if randomised, else 1).
        surrogates: name → model: every white-box attack is also crafted on each of these and
            evaluated on `model` as a transfer run (`crafted_on` = the name). A CRF model's
            unaries are such a surrogate: a transfer that beats the white-box attack exposes
            gradient masking (Arnab et al. §7.2) through the white>surrogate check.
        examples: how many first images to keep (clean and adversarial) for overlays.
    """
    attacks = list(dict.fromkeys([*attacks, "noise"]))
    draws = draws_default(is_randomised(model), draws)
    kind_of = {
        name: ("transfer" if source is not None and ATTACKS[name].kind == "white-box" else ATTACKS[name].kind)
        for name in attacks
    }
    crafting_models: dict[str, nn.Module] = {"": source if source is not None else model}
    runs = {(a, e, ""): AttackRun(a, e, kind_of[a], {}) for e in eps_values for a in attacks}
    for surrogate_name, surrogate in (surrogates or {}).items():
        crafting_models[surrogate_name] = surrogate
        for e in eps_values:
            for a in attacks:
                if ATTACKS[a].kind == "white-box":
                    runs[(a, e, surrogate_name)] = AttackRun(a, e, "transfer", {}, crafted_on=surrogate_name)
    clean = [ImageCounts.empty(dataset.num_classes) for _ in range(draws)]
    kept: dict[str, list[torch.Tensor]] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pad)
    bar = tqdm(total=len(loader) * len(runs), desc="attack", unit="run", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            for d, predictions in enumerate(_draws(model, images, draws)):
                clean[d] = clean[d].extend(ImageCounts.from_predictions(predictions, labels, dataset.num_classes))
            keep_first(kept, "images", images, examples)
            keep_first(kept, "labels", labels, examples)
            for (name, eps, crafted_on), run in runs.items():
                bar.set_postfix_str(f"{name} ε={eps:.4f}" + (f" on {crafted_on}" if crafted_on else ""))
                attack = create_attack(
                    name, ThreatModel(eps), steps=steps, eot=eot, allow_random=allow_random, seed=seed
                )
                start = time.perf_counter()
                outputs = attack.run_members(crafting_models[crafted_on], images, labels)
                run.seconds += time.perf_counter() - start
                worst = LowestPerImage({"images": images})
                for member, output in outputs.items():
                    run.gradients.add(output.gradients)
                    for d, predictions in enumerate(_draws(model, output.images, draws)):
                        counts = run.add(f"{member}@{d}", predictions, labels, dataset.num_classes)
                        if d == 0:  # the overlay shows each image under its worst member (draw 0)
                            worst.offer(torch.from_numpy(counts.accuracy_per_image()).float(), images=output.images)
                key = f"{name}@{eps}" + (f"[{crafted_on}]" if crafted_on else "")
                keep_first(kept, key, worst["images"], examples)
                bar.update()
    finally:
        model.train(was_training)
        bar.close()
    return Evaluation(
        num_classes=dataset.num_classes,
        images=len(dataset),
        draws=draws,
        clean=clean,
        runs=list(runs.values()),
        examples={k: torch.cat(v)[:examples].cpu() for k, v in kept.items()},
    )


def _draws(model: nn.Module, images: torch.Tensor, draws: int) -> Iterator[torch.Tensor]:
    """Predicted class maps of each evaluation draw (one fixed RAD seed per draw)."""
    with torch.no_grad():
        for d in range(draws):
            with fixed_rad_seed(model, DRAW_SEED + d):
                yield model(images).argmax(1)


def keep_first(kept: dict[str, list[torch.Tensor]], key: str, tensor: torch.Tensor, limit: int) -> None:
    """Append the first images of `tensor` under `key` until `limit` are kept (for overlays)."""
    stored = sum(t.shape[0] for t in kept.get(key, []))
    if stored < limit:
        kept.setdefault(key, []).append(tensor[: limit - stored].detach().cpu())
