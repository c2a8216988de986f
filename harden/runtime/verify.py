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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from harden.attacks import ThreatModel, create_attack, is_randomised
from harden.attacks.base import draws_default, eot_default
from harden.attacks.checks import Check, outputs_are_logits
from harden.data import SegmentationDataset, collate_pad
from harden.devices import place
from harden.distributed import Distributed
from harden.errors import InputError
from harden.runtime.divergence import Divergence
from harden.runtime.engines import Engine, EngineModule
from harden.runtime.evidence import EvidenceWriter, WorstImages, image_sha256
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.twins import GRAPH, Deployment, reference_model
from harden.runtime.verify_audits import engine_arithmetic, not_judged, run_audits
from harden.runtime.verify_checks import verify_checks
from harden.runtime.verify_result import (
    ATTACK_CRAFTING,
    BLACK_BOX,
    CHECKS_AND_AUDITS,
    EVIDENCE,
    STATE_SAVING,
    DivergenceFigures,
    VerifyOptions,
    VerifyResult,
)
from harden.runtime.verify_scoring import Batch, Scorer, keep_lowest
from harden.runtime.verify_state import VerifyState, fingerprint, load_state, save_state


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
    scorer = Scorer(engine, twins, state, options.examples, device, evidence)
    size = options.batch_size
    todo = [i for b in my_batches[state.batches :] for i in range(b * size, min((b + 1) * size, len(dataset)))]
    loader = DataLoader(Subset(dataset, todo), batch_size=size, shuffle=False, collate_fn=collate_pad)
    per_batch = len(options.eps_values) * (len(twins) * len(options.attacks) + len(BLACK_BOX) + int(plan.diverge))
    facts: dict[str, Any] = {}  # the audits and the engine arithmetic, measured at the first look only
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
                result = _finish(state, scorer, plan, deployment, dataset, options, images=seen, facts=facts)
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
    scorer = Scorer(engine, twins, merged, options.examples, device)
    return _finish(merged, scorer, plan, deployment, dataset, options, facts=facts)


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
    scorer: Scorer, plan: _Plan, options: VerifyOptions, images: torch.Tensor, labels: torch.Tensor,
    ids: torch.Tensor, bar: tqdm,
) -> None:  # fmt: skip
    """Clean parity, white-box attacks on every twin, direct attacks on the engine and the
    divergence search, for one batch at every ε."""
    scorer.clean(images, labels, ids)
    engine_module = EngineModule(scorer.engine)
    worst_images: dict[float, WorstImages] = {}
    for eps in options.eps_values:
        threat = ThreatModel(eps)
        batch = Batch(images, labels, ids, eps)
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
    scorer: Scorer,
    plan: _Plan,
    deployment: Deployment,
    dataset: SegmentationDataset,
    options: VerifyOptions,
    images: int | None = None,
    facts: dict[str, Any] | None = None,
) -> VerifyResult:
    """Evaluations, sanity checks and audits over the whole (merged) state: the first `images`
    of the data (None: all of them). The deployment audits and the engine-arithmetic audit do not
    depend on the images seen so far (they use the first images and the data set): `facts` keeps
    them from the first look for the next ones."""
    facts = {} if facts is None else facts
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
        if not facts:
            facts["audits"] = run_audits(deployment, engine, twins, plan.deployed_twin, plan.reference, check_images)
            facts["arithmetic"] = engine_arithmetic(engine, deployment.precision, dataset)
        found, arithmetic = list(facts["audits"]), facts["arithmetic"]
    pixels = state.divergence.pixels
    divergence = DivergenceFigures(plan.diverge, state.divergence.agreement if pixels else None, pixels)
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
        shared_runs={name: list(runs.values()) for name, runs in state.shared_runs.items()},
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
