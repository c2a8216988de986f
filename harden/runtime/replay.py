"""`harden replay`: re-judge a deployment on the evidence set a verify run left, in seconds.

A deployed model is rebuilt many times after it is verified (another TensorRT version or GPU,
an ONNX Runtime upgrade, a re-quantisation). Replay scores the rebuilt engine on exactly the
images that decided the verdict — each verified image clean and, at every ε, the adversarial
image the verified engine scored worst on — with no twin and no gradient: only the engine's own
forward passes, batched as verify batched them, in every RAD draw verify used.

It then judges the rebuild with verify's gates and its three outcomes (`harden.runtime.gates`),
against the engine that was verified (its class maps are in the evidence):
- `clean-agreement[recorded]`: argmax agreement with the recorded engine on the clean images
  (the precision's clean-agreement gate);
- `adversarial-agreement[recorded]@ε`: the same on the worst adversarial images (the precision's
  adversarial-agreement gate);
- `survival[recorded]@ε`: the rebuild's worst-case mIoU over the recorded engine's on the same
  images (the survival gate): a rebuild that is less robust on the images that mattered fails;
- `robust-miou@ε` when a floor is set.
A faithful rebuild agrees with the recorded predictions and passes; a broken MAS, a changed int8
scale or another checkpoint moves its predictions and fails, naming the gate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from harden.attacks.evaluate import DRAW_SEED
from harden.attacks.threat import format_eps
from harden.attacks.worst_case import ImageCounts, worst_case
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.metrics import class_map
from harden.runtime.engines import Engine
from harden.runtime.evidence import Evidence
from harden.runtime.gates import (
    GateResult,
    Gates,
    agreement_intervals,
    estimated_gate,
    holm,
    miou_interval,
    survival_interval,
)
from harden.runtime.twins import Deployment
from harden.runtime.verify_state import Agreement


@dataclass
class Side:
    """One set of evidence images (clean, or the worst adversarial ones at one ε): per RAD draw,
    the counts of the recorded engine's and the replayed engine's class maps against the labels,
    and the replayed engine's agreement with the recorded one."""

    recorded: list[ImageCounts]
    replayed: list[ImageCounts]
    agreement: list[Agreement]

    @classmethod
    def empty(cls, draws: int, num_classes: int) -> Side:
        def counts() -> list[ImageCounts]:
            return [ImageCounts.empty(num_classes) for _ in range(draws)]

        return cls(counts(), counts(), [Agreement() for _ in range(draws)])

    def scores(self) -> dict[str, dict[str, float]]:
        """Worst case over the draws, per image, on each side (mIoU, pAcc)."""
        recorded, replayed = worst_case(self.recorded), worst_case(self.replayed)
        return {
            "recorded": {"miou": recorded.miou, "pixel_accuracy": recorded.pixel_accuracy},
            "replayed": {"miou": replayed.miou, "pixel_accuracy": replayed.pixel_accuracy},
        }

    def agreement_point(self) -> float:
        """The lowest agreement over the draws."""
        return min(a.agreement for a in self.agreement)


@dataclass
class ReplayResult:
    evidence: Evidence
    deployment: Deployment
    engine_name: str
    images: int
    draws: int
    clean: Side
    adversarial: dict[float, Side]
    forwards: int  # images the engine predicted (each image once per draw and per set)
    seconds: dict[str, float] = field(default_factory=dict)


def replay(
    evidence: Evidence, deployment: Deployment, engine: Engine, *, progress: bool = False,
    log: Callable[[str], None] = print,
) -> ReplayResult:  # fmt: skip
    """Score the open `engine` on every evidence image in every recorded draw."""
    if deployment.num_classes is not None and deployment.num_classes != evidence.num_classes:
        raise InputError(
            f"{deployment.artefact.name} predicts {deployment.num_classes} classes; the evidence in {evidence.folder} "
            f"was recorded for {evidence.num_classes}: not a rebuild of the verified model"
        )
    draws, classes = evidence.draws, evidence.num_classes
    if draws > 1 and not engine.takes_seed:
        log(f"note: the evidence holds {draws} RAD draws but {engine.name} takes no seed: every draw is the same pass")
    clean = Side.empty(draws, classes)
    adversarial = {eps: Side.empty(draws, classes) for eps in evidence.eps_values}
    started = time.perf_counter()
    inference = 0.0
    forwards = 0
    bar = tqdm(total=evidence.image_count, desc="replay", unit="image", disable=not progress)
    try:
        for batch in evidence.batches():
            sets = [(clean, batch.clean, batch.clean_predictions)]
            sets += [(adversarial[eps], batch.adversarial[k], batch.predictions[k])
                     for k, eps in enumerate(evidence.eps_values)]  # fmt: skip
            labels = batch.labels.numpy()
            valid = labels != IGNORE_INDEX
            pixels = torch.from_numpy(valid.reshape(len(labels), -1).sum(1))
            for side, images, recorded in sets:
                for d in range(draws):
                    start = time.perf_counter()
                    predicted = class_map(engine.logits(images, DRAW_SEED + d))
                    inference += time.perf_counter() - start
                    forwards += images.shape[0]
                    before = recorded[:, d]
                    if predicted.shape != before.shape:
                        raise InputError(
                            f"{engine.name} predicts {tuple(predicted.shape[1:])} class maps for the evidence's "
                            f"{tuple(before.shape[1:])} images: not the verified model's output size"
                        )
                    side.recorded[d] = side.recorded[d].extend(
                        ImageCounts.from_predictions(before, batch.labels, classes)
                    )
                    side.replayed[d] = side.replayed[d].extend(
                        ImageCounts.from_predictions(predicted, batch.labels, classes)
                    )
                    same = (predicted.numpy() == before.numpy()) & valid
                    side.agreement[d].add(batch.ids, torch.from_numpy(same.reshape(len(same), -1).sum(1)), pixels)
            bar.update(batch.ids.shape[0])
    finally:
        bar.close()
    total = time.perf_counter() - started
    return ReplayResult(evidence, deployment, engine.name, evidence.image_count, draws, clean, adversarial, forwards,
                        {"engine_inference": inference, "total": total})  # fmt: skip


def replay_gates(result: ReplayResult, gates: Gates, confidence: float) -> list[GateResult]:
    """verify's gates, against the recorded engine on the evidence images."""
    images = result.images
    out = [GateResult.exact("evidence", images > 0, f"{images} images in {len(result.evidence.manifest['files'])} "
                            "files, each file's sha256 as the manifest records")]  # fmt: skip
    out.append(estimated_gate(
        "clean-agreement[recorded]", agreement_intervals(result.clean.agreement, confidence), gates.clean_agreement,
        at_least=True, describe="replayed vs recorded engine on the clean evidence images: argmax agreement",
        percent=True,
    ))  # fmt: skip
    for eps, side in result.adversarial.items():
        text = format_eps(eps)
        out.append(estimated_gate(
            f"adversarial-agreement[recorded]@{text}", agreement_intervals(side.agreement, confidence),
            gates.adversarial_agreement, at_least=True, percent=True,
            describe="replayed vs recorded engine on the worst adversarial images: argmax agreement",
        ))  # fmt: skip
        replayed, recorded = worst_case(side.replayed), worst_case(side.recorded)
        interval = survival_interval(side.replayed, replayed, side.recorded, recorded, confidence)
        gate = estimated_gate(f"survival[recorded]@{text}", [interval], gates.survival, at_least=True,
                          describe=f"replayed worst-case mIoU {replayed.miou:.4f} vs recorded {recorded.miou:.4f}: "
                          "survival ratio")  # fmt: skip
        out.append(gate)
        if gates.min_robust_miou > 0:
            floor = [miou_interval(side.replayed, replayed, confidence)]
            out.append(estimated_gate(f"robust-miou@{text}", floor, gates.min_robust_miou, at_least=True,
                                  describe="replayed worst-case mIoU"))  # fmt: skip
    return holm(out, confidence)
