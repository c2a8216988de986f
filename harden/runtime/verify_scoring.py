"""Scoring one batch: the engine and every twin predict each candidate image over the RAD draws;
counts, parity and the worst images go into the resumable state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from harden.attacks.evaluate import DRAW_SEED, AttackRun, Evaluation
from harden.attacks.worst_case import ImageCounts, LowestPerImage
from harden.data.classes import IGNORE_INDEX
from harden.metrics import class_map
from harden.ram import fixed_rad_seed
from harden.runtime.engines import Engine
from harden.runtime.evidence import EvidenceWriter
from harden.runtime.verify_result import ENGINE_INFERENCE, TWIN_INFERENCE
from harden.runtime.verify_state import VerifyState


@dataclass
class Batch:
    """One batch at one ε, and the per-image worst adversarial image on the engine so far."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor  # (B,) dataset indices: parity is counted per image
    eps: float
    # per image, the adversarial image with the engine's lowest pAcc over attacks and draws, and
    # the engine's prediction on it in that draw
    worst: LowestPerImage = field(init=False)
    sources: list[str] = field(init=False)  # what produced each candidate: "attack/member on twin, draw d"

    def __post_init__(self) -> None:
        # kept on the images' device: every attack, member and draw offers its images, and only
        # the batch's final worst ones move to the host (keep_lowest)
        self.sources = ["clean image (no candidate scored lower)"]
        self.worst = LowestPerImage({"adversarial": self.images, "prediction": torch.zeros_like(self.labels),
                                     "source": torch.zeros_like(self.ids)})  # fmt: skip

    def offer(self, accuracy: torch.Tensor, adversarial: torch.Tensor, prediction: torch.Tensor, source: str) -> None:
        self.sources.append(source)
        index = torch.full_like(self.ids, len(self.sources) - 1)
        self.worst.offer(accuracy, adversarial=adversarial, prediction=prediction, source=index)


class Scorer:
    """Scores images: predicts them on the engine and on the twins (per RAD draw) and adds the
    counts, parity and worst images to the state. Attacks are crafted by `_verify_batch`."""

    def __init__(
        self, engine: Engine, twins: dict[str, nn.Module], state: VerifyState, examples: int, device: torch.device,
        evidence: EvidenceWriter | None = None,
    ) -> None:  # fmt: skip
        self.engine, self.twins, self.state, self.limit, self.device = engine, twins, state, examples, device
        self.num_classes, self.draws = state.num_classes, state.draws
        self.timer = Timer(state.seconds)
        self.evidence = evidence  # where each batch's evidence goes (None: --no-evidence)

    def on_engine_classes(self, images: torch.Tensor, draw: int) -> torch.Tensor:
        """The engine's class map of `images` in `draw` (what the evidence set records)."""
        return class_map(self.on_engine(images, draw))

    def on_engine(self, images: torch.Tensor, draw: int) -> torch.Tensor:
        with self.timer(ENGINE_INFERENCE):
            return self.engine.logits(images, DRAW_SEED + draw).to(self.device)

    def on_twin(self, twin: nn.Module, images: torch.Tensor, draw: int) -> torch.Tensor:
        with self.timer(TWIN_INFERENCE), torch.no_grad(), fixed_rad_seed(twin, DRAW_SEED + draw):
            return twin(images.to(self.device))

    def counts(self, logits: torch.Tensor, labels: torch.Tensor) -> ImageCounts:
        return ImageCounts.from_predictions(class_map(logits), labels, self.num_classes)

    def engine_run(self, attack: str, eps: float, kind: str, crafted_on: str) -> AttackRun:
        return self.state.engine_runs.setdefault(
            (attack, crafted_on, eps), AttackRun(attack, eps, kind, {}, crafted_on=crafted_on)
        )

    def clean(self, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        state = self.state
        for d in range(self.draws):
            engine_logits = self.on_engine(images, d)
            state.clean_engine[d] = state.clean_engine[d].extend(self.counts(engine_logits, labels))
            for name, twin in self.twins.items():
                twin_logits = self.on_twin(twin, images, d)
                state.clean_twin[name][d] = state.clean_twin[name][d].extend(self.counts(twin_logits, labels))
                state.clean_parity[name][d].add(twin_logits, engine_logits, labels, self.num_classes, ids)

    def evaluate(self, batch: Batch, run: AttackRun, member: str, adversarial: torch.Tensor, twin: str | None) -> None:
        """Predict adversarial images on the engine and on EVERY twin per draw: the survival gate
        compares the engine's worst case with each twin's over the same candidates (like for
        like). `twin` crafted them (None: the engine or the divergence search did): its own
        predictions also count as its white-box run and as adversarial parity."""
        for d in range(self.draws):
            key = f"{member}@{d}"
            engine_logits = self.on_engine(adversarial, d)
            engine_prediction = class_map(engine_logits)
            counts = run.add(key, engine_prediction, batch.labels, self.num_classes)
            accuracy = torch.from_numpy(counts.accuracy_per_image()).float()
            source = f"{run.attack}/{member} on {run.crafted_on}, draw {d}"
            batch.offer(accuracy, adversarial, engine_prediction, source)
            for name, model in self.twins.items():
                twin_logits = self.on_twin(model, adversarial, d)
                twin_prediction = class_map(twin_logits)
                shared = self.state.shared_runs[name].setdefault(
                    (run.attack, run.crafted_on, batch.eps), AttackRun(run.attack, batch.eps, run.kind, {},
                                                                       crafted_on=run.crafted_on)
                )  # fmt: skip
                shared.add(key, twin_prediction, batch.labels, self.num_classes)
                if name != twin:
                    continue
                twin_run = self.state.twin_runs[name].setdefault(
                    (run.attack, batch.eps), AttackRun(run.attack, batch.eps, "white-box", {})
                )
                twin_run.add(key, twin_prediction, batch.labels, self.num_classes)
                self.state.adversarial_parity[name].add(twin_logits, engine_logits, batch.labels, self.num_classes,
                                                        batch.ids)  # fmt: skip

    def disagreement(self, reference: nn.Module, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        valid = labels != IGNORE_INDEX
        for d in range(self.draws):
            engine_pred = self.on_engine(images, d).argmax(1)
            reference_pred = self.on_twin(reference, images, d).argmax(1)
            agree = ((engine_pred == reference_pred) & valid).flatten(1).sum(1)
            self.state.divergence.add(ids, agree.cpu(), valid.flatten(1).sum(1).cpu())

    def evaluation(self, runs: list[AttackRun], clean: list[ImageCounts], images: int) -> Evaluation:
        examples = self.state.examples
        kept = {k: torch.cat(v)[: self.limit] for k, v in examples.items() if not k.startswith("worst-")}
        for eps in {float(k.rsplit("@", 1)[1]) for k in examples if k.startswith("worst-acc@")}:
            kept.update(lowest(examples, eps, self.limit))
        return Evaluation(self.num_classes, images, self.draws, clean, runs, kept)


def keep_lowest(kept: dict[str, list[torch.Tensor]], eps: float, limit: int, **tensors: torch.Tensor) -> None:
    """Add a batch's per-image tensors (`acc`: each image's lowest pAcc over attacks and draws,
    `ids`, images, ...) to the pool of worst images at ε and keep only the `limit` lowest: the
    report shows the truly worst images, not the first ones. Pools of several ranks merge by
    concatenation; `lowest` selects again."""
    for name, tensor in tensors.items():
        kept.setdefault(f"worst-{name}@{eps}", []).append(tensor.detach().cpu())
    for name, tensor in lowest(kept, eps, limit).items():
        kept[name] = [tensor]


def lowest(kept: dict[str, list[torch.Tensor]], eps: float, limit: int) -> dict[str, torch.Tensor]:
    """The `limit` images of lowest pAcc in the pool at ε (ties: the lower image id first)."""
    pool = {k: torch.cat(v) for k, v in kept.items() if k.startswith("worst-") and k.endswith(f"@{eps}")}
    ids = pool[f"worst-ids@{eps}"].double()
    order = sorted(range(len(ids)), key=lambda i: (float(pool[f"worst-acc@{eps}"][i]), float(ids[i])))[:limit]
    index = torch.tensor(order, dtype=torch.long)
    return {k: v[index] for k, v in pool.items()}


class Timer:
    """Accumulates wall time per phase into `seconds`: `with timer(ATTACK_CRAFTING): ...`."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self._stack: list[tuple[str, float]] = []

    def __call__(self, phase: str) -> Timer:
        self._stack.append((phase, time.perf_counter()))
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        phase, start = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed
        for i, (outer, outer_start) in enumerate(self._stack):  # a nested phase is not counted twice
            self._stack[i] = (outer, outer_start + elapsed)
