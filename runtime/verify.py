"""`verify`: does the robustness we trained survive deployment? (DESIGN.md §5, §6)

For every batch of the verification data:
1. clean parity — the engine and every twin on the same images and the same RAD seeds
   (draw d uses seed DRAW_SEED + d): argmax agreement, max |Δlogit|, counts for mIoU;
2. re-attack — each white-box attack at each ε is crafted on each twin (EOT over RAD seeds for a
   randomised twin) and its images are predicted by the engine AND by the twin over every draw:
   robust mIoU/pAcc on both sides and adversarial parity;
3. direct attacks on the engine — Square (queries only) and the random-noise floor;
4. divergence search — DIVA-style PGD on (fp32 reference, deployed graph twin), predicted by
   the engine (`runtime.divergence`).
The engine's verdict per image and per dataset is the worst case over all of them; the
deployment audits (`runtime.audits`) and the sanity checks (`harden.attacks.checks`) run too.
`runtime.gates` turns the result into pass/fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from harden.attacks import ATTACKS, ThreatModel, create_attack, is_randomised
from harden.attacks.checks import Check, outputs_are_logits, run_checks
from harden.attacks.evaluate import DRAW_SEED, AttackRun, Evaluation, keep_first
from harden.attacks.worst_case import ImageCounts, WorstCase, worst_case
from harden.data import SegmentationDataset, collate_pad
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.ram import fixed_rad_seed, has_rad
from runtime import audits
from runtime.divergence import Divergence
from runtime.engines import Engine, EngineModule
from runtime.graph_twin import GraphTwin
from runtime.twins import GRAPH, Deployment, reference_model

BLACK_BOX = ("square", "noise")  # run on the engine itself, by queries


@dataclass(frozen=True)
class VerifyOptions:
    """Args:
    attacks: white-box attacks crafted on every twin (registry names).
    eps_values: L∞ radii.
    steps: iterations of every white-box attack (None: each attack's default).
    eot: EOT draws per gradient of a randomised twin (None: 8 if randomised, else 1).
    draws: RAD draws every prediction is evaluated over (None: 3 if the engine uses RAD, else 1).
    queries: Square's queries per image on the engine.
    divergence_steps: PGD steps of the divergence search (0: skip it — only when there is no
        second model to diverge from).
    """

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    eps_values: tuple[float, ...] = (4 / 255, 8 / 255)
    steps: int | None = None
    eot: int | None = None
    draws: int | None = None
    queries: int = 100
    divergence_steps: int = 10
    seed: int = 0
    batch_size: int = 4
    examples: int = 4

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise InputError(f"unknown attack {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        direct = [a for a in self.attacks if a in BLACK_BOX]
        if direct:
            raise InputError(f"{', '.join(direct)} always run on the engine; list only white-box attacks")
        if not self.attacks or not self.eps_values:
            raise InputError("verification needs at least one attack and one ε")
        for eps in self.eps_values:
            ThreatModel(eps)
        for name, value, low in (("queries", self.queries, 1), ("batch size", self.batch_size, 1),
                                 ("divergence steps", self.divergence_steps, 0)):  # fmt: skip
            if value < low:
                raise InputError(f"{name} must be ≥ {low}, got {value}")


@dataclass
class Parity:
    """Twin vs engine over the pixels seen so far (same images, same RAD seed)."""

    agree: int = 0
    pixels: int = 0
    max_abs: float = 0.0
    twin: ImageCounts | None = None
    engine: ImageCounts | None = None

    def add(self, twin: torch.Tensor, engine: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        self.agree += int((twin.argmax(1) == engine.argmax(1)).sum())
        self.pixels += twin.shape[0] * twin.shape[-2] * twin.shape[-1]
        self.max_abs = max(self.max_abs, float((twin.float() - engine.float()).abs().max()))
        for side, logits in (("twin", twin), ("engine", engine)):
            counts = ImageCounts.from_predictions(logits.argmax(1), labels, num_classes)
            old = getattr(self, side)
            setattr(self, side, counts if old is None else old.extend(counts))

    @property
    def agreement(self) -> float:
        return self.agree / self.pixels if self.pixels else float("nan")

    def miou_delta(self) -> float:
        assert self.twin is not None and self.engine is not None
        return abs(self.twin.scores()[0] - self.engine.scores()[0])

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "max_abs_diff": self.max_abs, "pixels": self.pixels,
                "miou_delta": self.miou_delta() if self.pixels else None}  # fmt: skip


@dataclass
class VerifyResult:
    deployment: Deployment
    engine_name: str
    twins: list[str]
    images: int
    draws: int
    eot: int
    engine: Evaluation  # every candidate predicted by the engine
    twin_evaluations: dict[str, Evaluation]  # each twin's own white-box attacks, predicted by the twin
    clean_parity: dict[str, list[Parity]]  # twin → one per draw
    adversarial_parity: dict[str, Parity]
    divergence: dict[str, Any]
    audits: list[Check]
    checks: list[Check]
    seconds: dict[str, float] = field(default_factory=dict)
    example_predictions: dict[str, torch.Tensor] = field(default_factory=dict)  # engine, draw 0, kept images

    def worst_at(self, eps: float) -> WorstCase:
        candidates = [c for r in self.engine.runs if r.eps == eps for c in r.candidates.values()]
        return worst_case(candidates)

    def twin_worst_at(self, twin: str, eps: float) -> WorstCase | None:
        return self.twin_evaluations[twin].worst_at(eps, ("white-box",))


def verify(
    deployment: Deployment,
    engine: Engine,
    twins: dict[str, nn.Module],
    dataset: SegmentationDataset,
    options: VerifyOptions,
    *,
    progress: bool = True,
) -> VerifyResult:
    """Run everything of the module docstring; `engine` must be open (inside `with`)."""
    if len(dataset) == 0:
        raise InputError("the verification dataset is empty: nothing would be verified (fail closed)")
    reference = reference_model(twins, deployment)
    graph = twins.get(GRAPH)
    deployed_twin = graph if isinstance(graph, GraphTwin) else GraphTwin.from_file(deployment.onnx)
    randomised = engine.takes_seed or any(is_randomised(t) for t in twins.values())
    eot = options.eot if options.eot is not None else (8 if randomised else 1)
    draws = options.draws if options.draws is not None else (3 if randomised else 1)
    if randomised and (eot < 2 or draws < 2):
        raise InputError(f"the deployment is randomised (RAD): use --eot ≥ 2 and --draws ≥ 2 (got {eot}, {draws})")
    state = _State(engine, twins, dataset.num_classes, draws, options.examples)
    diverge = options.divergence_steps > 0 and reference is not deployed_twin
    engine_module = EngineModule(engine)
    loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False, collate_fn=collate_pad)
    per_batch = len(options.eps_values) * (len(twins) * len(options.attacks) + len(BLACK_BOX) + int(diverge))
    bar = tqdm(total=len(loader) * per_batch, desc="verify", unit="attack", disable=not progress)
    try:
        for images, labels in loader:
            state.clean(images, labels)
            for eps in options.eps_values:
                threat = ThreatModel(eps)
                batch = _Batch(images, labels, eps)
                for twin_name, twin in twins.items():
                    for name in options.attacks:
                        bar.set_postfix_str(f"{name} on {twin_name} ε={eps:.4f}")
                        run = state.engine_run(name, eps, "white-box", twin_name)
                        attack = create_attack(name, threat, steps=options.steps, eot=eot, seed=options.seed)
                        with state.timer("attack"):
                            start = time.perf_counter()
                            outputs = attack.run_members(twin, images, labels)
                            run.seconds += time.perf_counter() - start
                        for member, output in outputs.items():
                            run.gradients.add(output.gradients)
                            state.evaluate(batch, run, member, output.images, twin_name)
                        bar.update()
                for name in BLACK_BOX:
                    bar.set_postfix_str(f"{name} on the engine ε={eps:.4f}")
                    run = state.engine_run(name, eps, "black-box", "engine")
                    steps = options.queries if name == "square" else None
                    attack = create_attack(name, threat, steps=steps, eot=eot if name == "square" else 1,
                                           seed=options.seed)  # fmt: skip
                    with state.timer("attack"):
                        output = attack(engine_module, images, labels)
                    state.evaluate(batch, run, name, output.images, None)
                    bar.update()
                if diverge:
                    bar.set_postfix_str(f"divergence ε={eps:.4f}")
                    run = state.engine_run("divergence", eps, "divergence", "reference+graph")
                    search = Divergence(threat, reference=reference, steps=options.divergence_steps, eot=eot,
                                        seed=options.seed)  # fmt: skip
                    with state.timer("attack"):
                        output = search(deployed_twin, images, labels)
                    state.evaluate(batch, run, "divergence", output.images, None)
                    state.disagreement(reference, output.images, labels)
                    bar.update()
                keep_first(state.examples, f"worst@{eps}", batch.worst_images, options.examples)
    finally:
        bar.close()

    engine_eval = state.evaluation(list(state.engine_runs.values()), state.clean_engine, len(dataset))
    twin_evals = {
        name: state.evaluation(list(runs.values()), state.clean_twin[name], len(dataset))
        for name, runs in state.twin_runs.items()
    }
    check_images, check_labels = collate_pad([dataset[i] for i in range(min(2, len(dataset)))])
    with state.timer("checks"):
        primary = twins.get(GRAPH) or next(iter(twins.values()))
        checks = run_checks(engine_eval, primary, check_images, check_labels, eot=eot)
        engine_logits = outputs_are_logits(engine_module, check_images)
        checks.append(Check("engine-logits", engine_logits.status, "engine: " + engine_logits.detail))
        found = _audits(deployment, engine, twins, deployed_twin, reference, check_images)
    agree, pixels = state.divergence
    largest = max(options.eps_values)
    predictions = {
        "clean": state.on_engine(engine_eval.examples["images"], 0).argmax(1),
        "adversarial": state.on_engine(engine_eval.examples[f"worst@{largest}"], 0).argmax(1),
    }
    return VerifyResult(
        deployment=deployment,
        engine_name=engine.name,
        twins=list(twins),
        images=len(dataset),
        draws=draws,
        eot=eot,
        engine=engine_eval,
        twin_evaluations=twin_evals,
        clean_parity=state.clean_parity,
        adversarial_parity=state.adversarial_parity,
        divergence={"ran": diverge, "agreement_with_reference": agree / pixels if pixels else None, "pixels": pixels},
        audits=found,
        checks=checks,
        seconds=dict(state.timer.seconds),
        example_predictions=predictions,
    )


@dataclass
class _Batch:
    """One batch at one ε, and the per-image worst adversarial image on the engine so far."""

    images: torch.Tensor
    labels: torch.Tensor
    eps: float
    worst_images: torch.Tensor = field(init=False)
    worst_accuracy: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.worst_images = self.images
        self.worst_accuracy = torch.full((self.images.shape[0],), float("inf"))


class _State:
    """Everything `verify` accumulates over the batches."""

    def __init__(
        self, engine: Engine, twins: dict[str, nn.Module], num_classes: int, draws: int, examples: int
    ) -> None:
        self.engine, self.twins, self.num_classes, self.draws, self.limit = engine, twins, num_classes, draws, examples
        self.timer = _Timer()
        self.engine_runs: dict[tuple[str, str, float], AttackRun] = {}
        self.twin_runs: dict[str, dict[tuple[str, float], AttackRun]] = {name: {} for name in twins}
        self.clean_engine = [ImageCounts.empty(num_classes) for _ in range(draws)]
        self.clean_twin = {name: [ImageCounts.empty(num_classes) for _ in range(draws)] for name in twins}
        self.clean_parity = {name: [Parity() for _ in range(draws)] for name in twins}
        self.adversarial_parity = {name: Parity() for name in twins}
        self.divergence = (0, 0)  # (pixels where engine and reference agree, labelled pixels)
        self.examples: dict[str, list[torch.Tensor]] = {}

    def on_engine(self, images: torch.Tensor, draw: int) -> torch.Tensor:
        with self.timer("engine"):
            return self.engine.logits(images, DRAW_SEED + draw)

    def on_twin(self, twin: nn.Module, images: torch.Tensor, draw: int) -> torch.Tensor:
        with self.timer("engine"), torch.no_grad(), fixed_rad_seed(twin, DRAW_SEED + draw):
            return twin(images)

    def counts(self, logits: torch.Tensor, labels: torch.Tensor) -> ImageCounts:
        return ImageCounts.from_predictions(logits.argmax(1), labels, self.num_classes)

    def engine_run(self, attack: str, eps: float, kind: str, crafted_on: str) -> AttackRun:
        return self.engine_runs.setdefault(
            (attack, crafted_on, eps), AttackRun(attack, eps, kind, {}, crafted_on=crafted_on)
        )

    def clean(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        keep_first(self.examples, "images", images, self.limit)
        keep_first(self.examples, "labels", labels, self.limit)
        for d in range(self.draws):
            engine_logits = self.on_engine(images, d)
            self.clean_engine[d] = self.clean_engine[d].extend(self.counts(engine_logits, labels))
            for name, twin in self.twins.items():
                twin_logits = self.on_twin(twin, images, d)
                self.clean_twin[name][d] = self.clean_twin[name][d].extend(self.counts(twin_logits, labels))
                self.clean_parity[name][d].add(twin_logits, engine_logits, labels, self.num_classes)

    def evaluate(self, batch: _Batch, run: AttackRun, member: str, adversarial: torch.Tensor, twin: str | None) -> None:
        """Predict adversarial images on the engine (and on the twin that crafted them) per draw."""
        for d in range(self.draws):
            key = f"{member}@{d}"
            engine_logits = self.on_engine(adversarial, d)
            counts = self.counts(engine_logits, batch.labels)
            run.candidates[key] = run.candidates.get(key, ImageCounts.empty(self.num_classes)).extend(counts)
            accuracy = torch.from_numpy(counts.accuracy_per_image()).float()
            lower = accuracy < batch.worst_accuracy
            batch.worst_accuracy = torch.where(lower, accuracy, batch.worst_accuracy)
            batch.worst_images = torch.where(lower.view(-1, 1, 1, 1), adversarial, batch.worst_images)
            if twin is None:
                continue
            twin_logits = self.on_twin(self.twins[twin], adversarial, d)
            twin_run = self.twin_runs[twin].setdefault(
                (run.attack, batch.eps), AttackRun(run.attack, batch.eps, "white-box", {})
            )
            twin_counts = self.counts(twin_logits, batch.labels)
            twin_run.candidates[key] = twin_run.candidates.get(key, ImageCounts.empty(self.num_classes)).extend(
                twin_counts
            )
            self.adversarial_parity[twin].add(twin_logits, engine_logits, batch.labels, self.num_classes)

    def disagreement(self, reference: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        valid = labels != IGNORE_INDEX
        agree, pixels = self.divergence
        for d in range(self.draws):
            engine_pred = self.on_engine(images, d).argmax(1)
            reference_pred = self.on_twin(reference, images, d).argmax(1)
            agree += int(((engine_pred == reference_pred) & valid).sum())
            pixels += int(valid.sum())
        self.divergence = (agree, pixels)

    def evaluation(self, runs: list[AttackRun], clean: list[ImageCounts], images: int) -> Evaluation:
        kept = {k: torch.cat(v)[: self.limit] for k, v in self.examples.items()}
        return Evaluation(self.num_classes, images, self.draws, clean, runs, kept)


def _audits(
    deployment: Deployment,
    engine: Engine,
    twins: dict[str, nn.Module],
    deployed_twin: GraphTwin,
    reference: nn.Module,
    images: torch.Tensor,
) -> list[Check]:
    source = twins.get("source")
    what = "the source model" if source is not None else "the export manifest"
    expected = audits.expected_harden_nodes(source, deployment.manifest)
    source_drops = has_rad(source) if source is not None else bool(expected["rad"])
    if source is not None:
        weight_check = audits.weights(deployed_twin, audits.checkpoint_weights(source), "the checkpoint")
    elif isinstance(reference, GraphTwin) and reference is not deployed_twin:  # the fp32 export
        weight_check = audits.weights(deployed_twin, reference.constants(), "the fp32 export")
    else:
        weight_check = Check(
            "weights", "n/a", "no source twin to compare the deployed weights with (pass --twin RUN_DIR)"
        )
    return [
        audits.graph_ops(deployed_twin, expected, what),
        audits.seed_dependence(engine, images, source_drops),
        weight_check,
        audits.int8_calibration(deployed_twin, images),
    ]


class _Timer:
    """Accumulates wall time per phase: `with timer("attack"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[tuple[str, float]] = []

    def __call__(self, phase: str) -> _Timer:
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
