"""`verify`: does the robustness we trained survive deployment? (docs/design.md §5, §6)

For every batch of the verification data:
1. clean parity — the engine and every twin on the same images and the same RAD seeds
   (draw d uses seed DRAW_SEED + d): argmax agreement, max |Δlogit|, counts for mIoU;
2. re-attack — each white-box attack at each ε is crafted on each twin (EOT over RAD seeds for a
   randomised twin) and its images are predicted by the engine AND by the twin over every draw:
   robust mIoU/pAcc on both sides and adversarial parity;
3. direct attacks on the engine — Square (queries only) and the random-noise floor;
4. divergence search — DIVA-style PGD on (fp32 reference, deployed graph twin), predicted by
   the engine (`harden.runtime.divergence`).
The engine's verdict per image and per dataset is the worst case over all of them; the
deployment audits (`harden.runtime.audits`) and the sanity checks (`harden.attacks.checks`) run too.
`harden.runtime.gates` turns the result into pass/fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from harden.attacks import ATTACKS, ThreatModel, create_attack, is_randomised
from harden.attacks.base import draws_default, eot_default
from harden.attacks.checks import Check, outputs_are_logits
from harden.attacks.evaluate import DRAW_SEED, AttackRun, Evaluation
from harden.attacks.worst_case import ImageCounts, LowestPerImage, WorstCase, worst_case
from harden.data import SegmentationDataset, collate_pad
from harden.data.classes import IGNORE_INDEX
from harden.devices import place
from harden.distributed import Distributed
from harden.errors import InputError
from harden.export.arithmetic import audit_file
from harden.metrics import class_map
from harden.ram import fixed_rad_seed, has_rad
from harden.runtime import audits, provenance, structure
from harden.runtime.divergence import Divergence
from harden.runtime.engines import Engine, EngineModule, OnnxRuntimeEngine
from harden.runtime.evidence import EvidenceWriter, WorstImages, image_sha256
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.twins import GRAPH, Deployment, reference_model
from harden.runtime.verify_checks import verify_checks
from harden.runtime.verify_state import Agreement, Parity, VerifyState, fingerprint, load_state, save_state

# the attacks the registry records as black-box run on the engine itself, by queries
BLACK_BOX = tuple(name for name, entry in ATTACKS.items() if entry.kind == "black-box")


# The phases of verify.json's "seconds". Each is timed exclusively: time spent in a phase nested
# inside another (the engine scoring an image inside the attack loop) counts for the inner one.
ENGINE_INFERENCE = "engine_inference"  # the deployed engine's forward passes
TWIN_INFERENCE = "twin_inference"  # the twins' forward passes when scoring (not inside attacks)
ATTACK_CRAFTING = "attack_crafting"  # white-box attacks on the twins, black-box and divergence search
STATE_SAVING = "state_saving"  # the resumable state written after every batch
CHECKS_AND_AUDITS = "checks_and_audits"  # sanity checks, deployment audits, engine arithmetic
EVIDENCE = "evidence"  # the evidence set: re-scoring the stored images on the engine, compressing, writing


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

    attacks: tuple[str, ...] = ("fgsm", "strongest")
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
    divergence_counts: Agreement  # per image: the divergence gate's interval
    audits: list[Check]
    checks: list[Check]
    engine_arithmetic: dict[str, Any]  # the deployed kernels vs the file as written (harden.export.arithmetic)
    seconds: dict[str, float] = field(default_factory=dict)
    localisation: dict[str, Any] | None = None  # the first diverging node when parity failed (runtime.localise)
    not_judged: list[str] = field(default_factory=list)  # what this verdict could not see, and why
    example_predictions: dict[str, torch.Tensor] = field(default_factory=dict)  # engine, draw 0, kept images

    def engine_candidates_at(self, eps: float) -> list[ImageCounts]:
        """Every (attack, member, draw) candidate at ε, as the engine predicted it."""
        return [c for r in self.engine.runs if r.eps == eps for c in r.candidates.values()]

    def twin_candidates_at(self, twin: str, eps: float) -> list[ImageCounts]:
        """The twin's own white-box candidates at ε, as the twin predicted them."""
        runs = self.twin_evaluations[twin].runs
        return [c for r in runs if r.eps == eps and r.kind == "white-box" for c in r.candidates.values()]

    def worst_at(self, eps: float) -> WorstCase:
        return worst_case(self.engine_candidates_at(eps))

    def twin_worst_at(self, twin: str, eps: float) -> WorstCase | None:
        candidates = self.twin_candidates_at(twin, eps)
        return worst_case(candidates) if candidates else None


def verify(
    deployment: Deployment,
    engine: Engine,
    twins: dict[str, nn.Module],
    dataset: SegmentationDataset,
    options: VerifyOptions,
    *,
    progress: bool = True,
    state_file: Path | None = None,
    resume: bool = False,
    distributed: Distributed | None = None,
    device: torch.device | None = None,
    looks: list[int] | None = None,
    decided: Callable[[VerifyResult], bool] | None = None,
    evidence: EvidenceWriter | None = None,
) -> VerifyResult | None:
    """Run everything of the module docstring; `engine` must be open (inside `with`).

    state_file: where the accumulated state is saved after every batch; with `resume`, the run
        continues after the last batch saved there (a run with other files, options or data is
        refused).
    distributed: under torchrun each rank verifies a contiguous block of batches; rank 0 merges
        the states and returns the result, the other ranks return None.
    device: where the twins, the images and every attack run (None: the CPU); the engine runs on
        its own device and its logits are brought here. The saved state stays on the CPU.
    looks, decided: sequential verification (`--images auto`): after the batch that completes
        each number of images in `looks`, the result so far is judged by `decided`; the first
        look it calls decided ends the run (one process only; looks are multiples of the batch).
    evidence: where each batch's clean and worst adversarial images go, with the engine's class
        maps of them (`harden.runtime.evidence`); None: kept nowhere (--no-evidence).
    """
    if len(dataset) == 0:
        raise InputError("the verification dataset is empty: nothing would be verified (fail closed)")
    distributed = distributed or Distributed()
    if looks and distributed.active:
        raise InputError("--images auto decides after each look in one process: run it without torchrun")
    device = device or torch.device("cpu")
    place(twins, device)
    plan = _Plan.make(deployment, engine, twins, options, device)
    my_batches = distributed.shard(math.ceil(len(dataset) / options.batch_size))
    identity = fingerprint(
        files=deployment.file_hashes(),
        checkpoint=deployment.manifest.checkpoint_sha256 if deployment.manifest else None,
        artefact=deployment.artefact.name, twins=list(twins), options=asdict(options), eot=plan.eot,
        draws=plan.draws, data=[dataset.name, len(dataset), dataset.num_classes, image_sha256(*dataset[0])],
        shard=[distributed.rank, distributed.world_size], evidence=evidence is not None,
    )  # fmt: skip
    if resume and state_file is not None and state_file.is_file():
        state = load_state(state_file, identity)
    else:
        state = VerifyState(list(twins), dataset.num_classes, plan.draws)
    scorer = _Scorer(engine, twins, state, options.examples, device, evidence)
    size = options.batch_size
    todo = [i for b in my_batches[state.batches :] for i in range(b * size, min((b + 1) * size, len(dataset)))]
    loader = DataLoader(Subset(dataset, todo), batch_size=size, shuffle=False, collate_fn=collate_pad)
    per_batch = len(options.eps_values) * (len(twins) * len(options.attacks) + len(BLACK_BOX) + int(plan.diverge))
    bar = tqdm(total=len(my_batches) * per_batch, initial=state.batches * per_batch, desc="verify", unit="attack",
               disable=not progress)  # fmt: skip
    try:
        for k, (images, labels) in enumerate(loader):
            ids = torch.tensor(todo[k * size : k * size + images.shape[0]])
            _verify_batch(scorer, plan, options, images.to(device), labels.to(device), ids, bar)
            state.batches += 1
            if state_file is not None:
                with scorer.timer(STATE_SAVING):
                    save_state(state_file, state, identity)
            seen = int(ids[-1]) + 1
            if looks and decided is not None and seen in looks and seen < len(dataset):
                result = _finish(state, scorer, plan, deployment, dataset, options, images=seen)
                if decided(result):
                    return result
    finally:
        bar.close()

    states = distributed.gather(state.to_dict())
    if states is None:  # not rank 0
        return None
    merged = VerifyState.from_dict(states[0])
    for other in states[1:]:
        merged.merge(VerifyState.from_dict(other))
    scorer = _Scorer(engine, twins, merged, options.examples, device)
    return _finish(merged, scorer, plan, deployment, dataset, options)


@dataclass(frozen=True)
class _Plan:
    """What follows from the deployment and the options before any image is seen."""

    reference: nn.Module  # the fp32 model the divergence search diverges from
    deployed_twin: GraphTwin  # the deployed graph, whether or not it is a chosen twin
    eot: int
    draws: int
    diverge: bool

    @classmethod
    def make(
        cls, deployment: Deployment, engine: Engine, twins: dict[str, nn.Module], options: VerifyOptions,
        device: torch.device,
    ) -> _Plan:  # fmt: skip
        graph = twins.get(GRAPH)
        if not isinstance(graph, GraphTwin):
            graph = GraphTwin.from_file(deployment.onnx, deployment.interface).to(device)
        deployed_twin = graph
        reference = reference_model(twins, deployment) or deployed_twin  # none: the deployed graph is its own
        reference = reference.to(device)
        randomised = engine.takes_seed or any(is_randomised(t) for t in twins.values())
        eot, draws = eot_default(randomised, options.eot), draws_default(randomised, options.draws)
        if randomised and (eot < 2 or draws < 2):
            raise InputError(f"the deployment is randomised (RAD): use --eot ≥ 2 and --draws ≥ 2 (got {eot}, {draws})")
        diverge = options.divergence_steps > 0 and reference is not deployed_twin
        return cls(reference, deployed_twin, eot, draws, diverge)


def _verify_batch(
    scorer: _Scorer, plan: _Plan, options: VerifyOptions, images: torch.Tensor, labels: torch.Tensor,
    ids: torch.Tensor, bar: tqdm,
) -> None:  # fmt: skip
    """Clean parity, white-box attacks on every twin, direct attacks on the engine and the
    divergence search, for one batch at every ε."""
    scorer.clean(images, labels, ids)
    engine_module = EngineModule(scorer.engine)
    worst_images: dict[float, WorstImages] = {}
    for eps in options.eps_values:
        threat = ThreatModel(eps)
        batch = _Batch(images, labels, ids, eps)
        for twin_name, twin in scorer.twins.items():
            for name in options.attacks:
                bar.set_postfix_str(f"{name} on {twin_name} ε={eps:.4f}")
                run = scorer.engine_run(name, eps, "white-box", twin_name)
                attack = create_attack(name, threat, steps=options.steps, eot=plan.eot, seed=options.seed)
                with scorer.timer(ATTACK_CRAFTING):
                    start = time.perf_counter()
                    outputs = attack.run_members(twin, images, labels)
                    run.seconds += time.perf_counter() - start
                for member, output in outputs.items():
                    run.gradients.add(output.gradients)
                    scorer.evaluate(batch, run, member, output.images, twin_name)
                bar.update()
        for name in BLACK_BOX:
            bar.set_postfix_str(f"{name} on the engine ε={eps:.4f}")
            run = scorer.engine_run(name, eps, "black-box", "engine")
            steps = options.queries if name == "square" else None
            eot = plan.eot if name == "square" else 1
            attack = create_attack(name, threat, steps=steps, eot=eot, seed=options.seed)
            with scorer.timer(ATTACK_CRAFTING):
                output = attack(engine_module, images, labels)
            scorer.evaluate(batch, run, name, output.images, None)
            bar.update()
        if plan.diverge:
            bar.set_postfix_str(f"divergence ε={eps:.4f}")
            run = scorer.engine_run("divergence", eps, "divergence", "reference+graph")
            search = Divergence(threat, reference=plan.reference, steps=options.divergence_steps, eot=plan.eot,
                                seed=options.seed)  # fmt: skip
            with scorer.timer(ATTACK_CRAFTING):
                output = search(plan.deployed_twin, images, labels)
            scorer.evaluate(batch, run, "divergence", output.images, None)
            scorer.disagreement(plan.reference, output.images, labels, ids)
            bar.update()
        worst = batch.worst
        keep_lowest(scorer.state.examples, eps, options.examples, acc=worst.score, ids=ids, clean=images, labels=labels,
                    adversarial=worst["adversarial"], prediction=worst["prediction"])  # fmt: skip
        worst_images[eps] = WorstImages(worst["adversarial"], [batch.sources[int(i)] for i in worst["source"]])
    if scorer.evidence is not None:
        with scorer.timer(EVIDENCE):
            scorer.evidence.add_batch(scorer.on_engine_classes, scorer.draws, ids, images, labels, worst_images)


def _finish(
    state: VerifyState,
    scorer: _Scorer,
    plan: _Plan,
    deployment: Deployment,
    dataset: SegmentationDataset,
    options: VerifyOptions,
    images: int | None = None,
) -> VerifyResult:
    """Evaluations, sanity checks and audits over the whole (merged) state: the first `images`
    of the data (None: all of them)."""
    engine, twins = scorer.engine, scorer.twins
    seen = len(dataset) if images is None else images
    engine_eval = scorer.evaluation(list(state.engine_runs.values()), state.clean_engine, seen)
    twin_evals = {
        name: scorer.evaluation(list(runs.values()), state.clean_twin[name], seen)
        for name, runs in state.twin_runs.items()
    }
    check_images, check_labels = collate_pad([dataset[i] for i in range(min(2, len(dataset)))])
    check_images, check_labels = check_images.to(scorer.device), check_labels.to(scorer.device)
    engine_module = EngineModule(engine)
    with scorer.timer(CHECKS_AND_AUDITS):
        primary = twins.get(GRAPH) or next(iter(twins.values()))
        checks = verify_checks(engine_eval, twin_evals, twins, primary, check_images, check_labels, eot=plan.eot,
                               draws=plan.draws, queries=options.queries, seed=options.seed)  # fmt: skip
        engine_logits = outputs_are_logits(engine_module, check_images)
        checks.append(Check("engine-logits", engine_logits.status, "engine: " + engine_logits.detail))
        found = _audits(deployment, engine, twins, plan.deployed_twin, plan.reference, check_images)
        arithmetic = engine_arithmetic(engine, deployment.precision, dataset)
    pixels = state.divergence.pixels
    divergence = {"ran": plan.diverge, "agreement_with_reference": state.divergence.agreement if pixels else None,
                  "pixels": pixels}  # fmt: skip
    largest = max(options.eps_values)
    predictions = {  # the worst images at the largest ε: the engine on them clean (draw 0) and attacked (worst draw)
        "clean": scorer.on_engine(engine_eval.examples[f"worst-clean@{largest}"].to(scorer.device), 0).argmax(1).cpu(),
        "adversarial": engine_eval.examples[f"worst-prediction@{largest}"],
    }
    return VerifyResult(
        deployment=deployment,
        engine_name=engine.name,
        twins=list(twins),
        images=seen,
        draws=plan.draws,
        eot=plan.eot,
        engine=engine_eval,
        twin_evaluations=twin_evals,
        clean_parity=state.clean_parity,
        adversarial_parity=state.adversarial_parity,
        divergence=divergence,
        divergence_counts=state.divergence,
        audits=found,
        checks=checks,
        engine_arithmetic=arithmetic,
        seconds=dict(state.seconds),
        example_predictions=predictions,
        not_judged=not_judged(deployment, twins),
    )


@dataclass
class _Batch:
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


class _Scorer:
    """Scores images: predicts them on the engine and on the twins (per RAD draw) and adds the
    counts, parity and worst images to the state. Attacks are crafted by `_verify_batch`."""

    def __init__(
        self, engine: Engine, twins: dict[str, nn.Module], state: VerifyState, examples: int, device: torch.device,
        evidence: EvidenceWriter | None = None,
    ) -> None:  # fmt: skip
        self.engine, self.twins, self.state, self.limit, self.device = engine, twins, state, examples, device
        self.num_classes, self.draws = state.num_classes, state.draws
        self.timer = _Timer(state.seconds)
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

    def evaluate(self, batch: _Batch, run: AttackRun, member: str, adversarial: torch.Tensor, twin: str | None) -> None:
        """Predict adversarial images on the engine (and on the twin that crafted them) per draw."""
        for d in range(self.draws):
            key = f"{member}@{d}"
            engine_logits = self.on_engine(adversarial, d)
            engine_prediction = class_map(engine_logits)
            counts = run.add(key, engine_prediction, batch.labels, self.num_classes)
            accuracy = torch.from_numpy(counts.accuracy_per_image()).float()
            source = f"{run.attack}/{member} on {run.crafted_on}, draw {d}"
            batch.offer(accuracy, adversarial, engine_prediction, source)
            if twin is None:
                continue
            twin_logits = self.on_twin(self.twins[twin], adversarial, d)
            twin_run = self.state.twin_runs[twin].setdefault(
                (run.attack, batch.eps), AttackRun(run.attack, batch.eps, "white-box", {})
            )
            twin_run.add(key, class_map(twin_logits), batch.labels, self.num_classes)
            self.state.adversarial_parity[twin].add(twin_logits, engine_logits, batch.labels, self.num_classes,
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


def _audits(
    deployment: Deployment,
    engine: Engine,
    twins: dict[str, nn.Module],
    deployed_twin: GraphTwin,
    reference: nn.Module,
    images: torch.Tensor,
) -> list[Check]:
    source = twins.get("source")
    if source is not None:
        weight_check = audits.weights(deployed_twin, audits.checkpoint_weights(source), "the checkpoint")
    elif isinstance(reference, GraphTwin) and reference is not deployed_twin:  # the fp32 export
        weight_check = audits.weights(deployed_twin, reference.constants(), "the fp32 reference")
    else:
        weight_check = Check(
            "weights", "n/a", "no source twin to compare the deployed weights with (pass --twin RUN_DIR)"
        )
    shape = structure.graph_structure(deployment, source)
    if source is None and not deployment.signed:
        unsigned = "unsigned: no manifest records "
        expectations = [
            Check("graph-ops", "n/a", unsigned + "which MAS/RAD nodes the graph must contain, and there is no source"),
            Check("rad-seed", "n/a", unsigned + "whether the model drops attention with RAD, and there is no source"),
        ]
    else:
        what = "the source model" if source is not None else "the export manifest"
        expected = audits.expected_harden_nodes(source, deployment.manifest)
        source_drops = has_rad(source) if source is not None else bool(expected["rad"])
        # a graph that is the source's fresh export node for node holds its MAS and RAD, even
        # when an optimiser inlined their functions (no harden:: node left to count)
        ops = audits.graph_ops(deployed_twin, expected, what)
        if shape.status == "pass" and ops.status == "fail":
            ops = Check("graph-ops", "pass", "MAS and RAD are there as the fresh export has them, inlined: "
                        "graph-structure matched the deployed graph node for node")  # fmt: skip
        expectations = [ops, audits.seed_dependence(engine, images, source_drops)]
    return [
        *expectations,
        shape,
        weight_check,
        audits.int8_calibration(deployed_twin, images),
        provenance.int8_provenance(deployment),
        provenance.float32_attention(deployed_twin, images, deployment.signed),
    ]


def not_judged(deployment: Deployment, twins: dict[str, nn.Module]) -> list[str]:
    """What the verdict cannot see with these twins (docs/design.md §6): a graph twin rebuilt from a
    broken file is the broken model, so without the source checkpoint export faults are invisible;
    an unsigned file has no recorded provenance at all."""
    blind = []
    if not deployment.signed:
        blind.append(
            "unsigned: no manifest — nothing records which checkpoint, export or calibration produced "
            f"{deployment.artefact.name}, so the audits that need that record are n/a"
        )
    if "source" in twins:
        if not deployment.signed:
            blind.append("the source twin is not tied to the file by a recorded checkpoint hash")
        return blind
    blind.append(
        "whether the export is faithful to the trained model: there is no source twin (--twin RUN_DIR), so the "
        "deployed weights are not compared with the checkpoint and a change made before or at export would be "
        "its own reference"
    )
    if deployment.precision == "fp32" or deployment.reference_file is None:
        blind.append(
            "survival against a reference: the graph twin is the deployed graph itself, so survival compares "
            "the engine with its own graph"
            + ("" if deployment.precision == "fp32" else " (pass --reference FILE.onnx, the file before quantisation)")
        )
    return blind


ARITHMETIC_IMAGES = 8


def engine_arithmetic(engine: Engine, precision: str, dataset: SegmentationDataset) -> dict[str, Any]:
    """The engine's kernels on this hardware vs the deployed file as written, on the first images.

    For ONNX Runtime: the optimised session that verify attacks against the same file with every
    graph optimisation off (`harden.export.arithmetic`). A TensorRT engine has no "as written"
    mode; its reference is the precision twin, which the clean-parity gates compare already.
    """
    if not isinstance(engine, OnnxRuntimeEngine) or engine.as_written:
        return {"status": "n/a", "detail": f"{engine.name}: compared with its precision twin by the parity gates"}
    images, labels = collate_pad([dataset[i] for i in range(min(ARITHMETIC_IMAGES, len(dataset)))])
    interface = engine.interface
    assert interface is not None, "the engine is open"
    if interface.batch == 1:
        feeds = [interface.feed(image, DRAW_SEED) for image in images.split(1)]
    else:
        feeds = [interface.feed(images, DRAW_SEED)]
    size = (labels.shape[-2], labels.shape[-1])

    def to_label_size(logits: np.ndarray) -> np.ndarray:
        return interface.postprocess(torch.from_numpy(logits), size).numpy()

    verdict = audit_file(engine.path, precision, feeds, labels.numpy(), dataset.num_classes, interface.output,
                         engine.device, to_label_size)  # fmt: skip
    return {"status": "pass" if verdict.passed else "fail", **verdict.to_dict()}


class _Timer:
    """Accumulates wall time per phase into `seconds`: `with timer(ATTACK_CRAFTING): ...`."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
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
