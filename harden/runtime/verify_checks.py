"""The sanity checks of docs/design.md §6 as their premises hold in `verify`.

`harden attack` evaluates ONE differentiable model; its checks (`harden.attacks.checks`) compare
that model's white-box attacks with black-box, transfer and single-step ones. In verify the model
under test is a deployed ENGINE with no gradients, and the twins are its surrogates: the graph
twin computes the engine's own arithmetic (on some CPUs bit for bit), the source twin is the
trained model. What each check means there:

- logits, eps=0, unbounded, randomness: the primary twin's own attacks — the attack machinery
  itself; unchanged.
- gradients: every white-box attack's gradients on its twin; unchanged.
- monotone: each twin's transfer to the engine, over ε; unchanged.
- white>black: each twin's white-box attacks vs Square and noise ON THE SAME TWIN, both predicted
  by that twin, on the same images. Gradient masking can only hide in a model with gradients.
- transfer>query: the engine's worst case from attacks crafted on the twins vs Square and noise
  by queries ON THE ENGINE. A deployment that shatters the twins' gradients shows here.
- iterative>single: per twin, iterative vs single-step white-box attacks predicted by that twin.
- white>surrogate: n/a. Every attack on the engine is crafted on a surrogate of it; comparing one
  twin's transfer with another's compares two surrogates (an exact graph twin is naturally the
  stronger one) and says nothing about masking. That comparison failed faithful int8
  deployments on CPUs where ONNX Runtime computes the file exactly (docs/verdicts.md).

Every check that runs attacks of its own does so on the checks' small batch (the first images).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harden.attacks import ThreatModel, create_attack
from harden.attacks.base import pixel_accuracy_per_image
from harden.attacks.checks import (
    TOLERANCE,
    Check,
    Status,
    accuracy_non_increasing_in_eps,
    eps_zero_is_clean,
    gradients_are_usable,
    iterative_beats_single_step,
    outputs_are_logits,
    randomness_is_handled,
    unbounded_attack_succeeds,
    white_box_beats_black_box,
)
from harden.attacks.evaluate import DRAW_SEED, Evaluation
from harden.attacks.threat import format_eps
from harden.ram import fixed_rad_seed

QUERY_ATTACKS = ("square", "noise")  # black-box: by queries only, on the engine and (for the check) each twin


def verify_checks(
    engine: Evaluation,
    twin_evaluations: dict[str, Evaluation],
    twins: dict[str, nn.Module],
    primary: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eot: int,
    draws: int,
    queries: int,
    seed: int,
) -> list[Check]:
    """Every check of the module docstring. images, labels: the first images of the data (the
    checks' own attacks run on them; row i is image i of the verification data)."""
    return [
        outputs_are_logits(primary, images),
        eps_zero_is_clean(primary, images, labels, eot=eot),
        unbounded_attack_succeeds(primary, images, labels, eot=eot, steps=10),
        accuracy_non_increasing_in_eps(engine),
        gradients_are_usable(engine),
        randomness_is_handled(primary, images, eot=eot, draws=draws),
        twins_white_beats_black(
            twin_evaluations, twins, images, labels, eot=eot, draws=draws, queries=queries, seed=seed
        ),
        transfer_beats_query(engine),
        iterative_beats_single_step_per_twin(twin_evaluations),
        Check(
            "white>surrogate",
            "n/a",
            "the engine has no gradients: every attack on it is crafted on a surrogate (a twin), so masking is "
            "judged per twin (white>black) and on the engine (transfer>query), not by comparing two surrogates",
        ),
    ]


def transfer_beats_query(engine: Evaluation) -> Check:
    """The engine's worst case from attacks crafted on the twins vs Square and noise on the engine."""
    check = white_box_beats_black_box(engine)
    if check.status == "fail":
        detail = check.detail.replace("white-box", "transfer from the twins").replace("black-box/transfer", "query")
        return Check("transfer>query", "fail", detail)
    return Check("transfer>query", check.status, "attacks crafted on the twins are at least as strong on the engine "
                 "as Square and random noise by queries on the engine")  # fmt: skip


def twins_white_beats_black(
    twin_evaluations: dict[str, Evaluation], twins: dict[str, nn.Module], images: torch.Tensor,
    labels: torch.Tensor, *, eot: int, draws: int, queries: int, seed: int,
) -> Check:  # fmt: skip
    """Per twin and ε: its white-box worst case on the first images (from verify's own runs,
    predicted by the twin) vs Square (`queries`) and noise run on the twin itself, on the same
    images, predicted by the twin over the same draws. Black-box below white-box is masking."""
    problems, compared = [], 0
    count = images.shape[0]
    for name, evaluation in twin_evaluations.items():
        for eps in evaluation.eps_values():
            white = _white_box_accuracy(evaluation, eps, count)
            if white is None:
                continue
            black = _query_accuracy(twins[name], images, labels, eps, eot=eot, draws=draws, queries=queries, seed=seed)
            compared += 1
            if float(black.mean()) < float(white.mean()) - TOLERANCE:
                problems.append(f"{name} twin ε {format_eps(eps)}: Square/noise pAcc {float(black.mean()):.4f} below "
                                f"its white-box {float(white.mean()):.4f} on the first {count} images")  # fmt: skip
    if not compared:
        return Check("white>black", "n/a", "no white-box attack was run on a twin")
    if problems:
        return Check("white>black", "fail", "; ".join(problems) + " — the twin's gradients mislead its attacks "
                     "(gradient masking): its robustness figures are overstated")  # fmt: skip
    detail = (
        f"every twin's white-box worst case is at least as strong as Square ({queries} queries) and noise on that "
        f"twin ({compared} twin × ε pairs, first {count} images)"
    )
    return Check("white>black", "pass", detail)


def _white_box_accuracy(evaluation: Evaluation, eps: float, count: int) -> np.ndarray | None:
    """Per image of the first `count`, the lowest pAcc over the white-box candidates at ε."""
    rows = [c.accuracy_per_image()[:count] for r in evaluation.runs if r.eps == eps and r.kind == "white-box"
            for c in r.candidates.values()]  # fmt: skip
    if not rows or len(rows[0]) < count:
        return None
    return np.min(np.stack(rows), axis=0)


def _query_accuracy(
    twin: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, eot: int, draws: int, queries: int,
    seed: int,
) -> np.ndarray:  # fmt: skip
    """Per image, the lowest pAcc on `twin` of Square and noise at ε, over the evaluation draws."""
    worst = torch.ones(images.shape[0], device=images.device)
    for attack_name in QUERY_ATTACKS:
        steps = queries if attack_name == "square" else None
        attack = create_attack(attack_name, ThreatModel(eps), steps=steps, eot=eot if attack_name == "square" else 1,
                               seed=seed)  # fmt: skip
        adversarial = attack(twin, images, labels).images
        for d in range(draws):
            with torch.no_grad(), fixed_rad_seed(twin, DRAW_SEED + d):
                worst = torch.minimum(worst, pixel_accuracy_per_image(twin(adversarial), labels))
    return worst.cpu().numpy()


def iterative_beats_single_step_per_twin(twin_evaluations: dict[str, Evaluation]) -> Check:
    """iterative>single on each twin's own white-box attacks (predicted by that twin)."""
    results = {name: iterative_beats_single_step(evaluation) for name, evaluation in twin_evaluations.items()}
    failed = [f"{name} twin: {c.detail}" for name, c in results.items() if c.status == "fail"]
    if failed:
        return Check("iterative>single", "fail", "; ".join(failed))
    status: Status = "pass" if any(c.status == "pass" for c in results.values()) else "n/a"
    if status == "n/a":
        return Check("iterative>single", "n/a", "needs a single-step (fgsm) and an iterative white-box attack")
    return Check("iterative>single", "pass", f"on every twin ({', '.join(results)}) iterative attacks are at least "
                 "as strong as single-step ones")  # fmt: skip
