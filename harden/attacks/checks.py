"""Sanity checks run with every robustness evaluation (docs/design.md §6; Carlini et al., AutoAttack).

Each check returns a `Check` with a status — "pass", "fail", or "n/a" when its premise is absent
by the user's choice (e.g. no single-step attack was run to compare iterative ones with) — and a
detail that says what was measured or why it does not apply. A premise that was present but
produced nothing to judge is a "fail" (fail closed). The checks that are part of soundness
itself (ε = 0, unbounded, randomness/EOT) run their own small attacks, so they always apply. An
evaluation is sound only if no check failed; `harden attack` and `harden verify` fail otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from harden.attacks._registry import create_attack
from harden.attacks.base import pixel_accuracy_per_image
from harden.attacks.evaluate import DRAW_SEED, Evaluation
from harden.attacks.threat import ThreatModel, format_eps
from harden.ram import fixed_rad_seed

TOLERANCE = 0.005  # half a percentage point of pAcc / mIoU: below the noise of a small dataset
UNBOUNDED_ACCURACY = 0.1  # an attack that may write any image must get pAcc below this
DAG_UNBOUNDED_STEPS = 30  # pspnet_tiny test fixture: pAcc 0.016–0.039 (PGD-CE alone: 0.063–0.069)

Status = Literal["pass", "fail", "n/a"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(
    evaluation: Evaluation, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eot: int, steps: int = 10
) -> list[Check]:
    """All checks. images, labels: a small batch for the checks that run attacks of their own."""
    return [
        outputs_are_logits(model, images),
        eps_zero_is_clean(model, images, labels, eot=eot),
        unbounded_attack_succeeds(model, images, labels, eot=eot, steps=steps),
        accuracy_non_increasing_in_eps(evaluation),
        gradients_are_usable(evaluation),
        randomness_is_handled(model, images, eot=eot, draws=evaluation.draws),
        white_box_beats_black_box(evaluation),
        white_box_beats_surrogate(evaluation),
        iterative_beats_single_step(evaluation),
    ]


def outputs_are_logits(model: nn.Module, images: torch.Tensor) -> Check:
    with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
        out = model(images)
    in_unit = bool((out >= 0).all() and (out <= 1).all())
    sums_to_one = bool(torch.allclose(out.sum(1), torch.ones_like(out.sum(1)), atol=1e-3))
    if in_unit and sums_to_one:
        return Check(
            "logits",
            "fail",
            "the model returns probabilities (softmax inside); CE-based attacks saturate — return logits",
        )
    return Check("logits", "pass", "outputs are unnormalised logits")


def eps_zero_is_clean(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eot: int) -> Check:
    attack = create_attack("pgd", ThreatModel(0.0), steps=2, eot=eot, allow_random=True)
    adversarial = attack(model, images, labels).images
    with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
        same = bool(torch.equal(model(adversarial).argmax(1), model(images).argmax(1)))
    if torch.equal(adversarial, images) and same:
        return Check("eps=0", "pass", "PGD at ε = 0 returns the clean images and predictions")
    return Check("eps=0", "fail", "PGD at ε = 0 changed the images or predictions: projection is broken")


def unbounded_attack_succeeds(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eot: int, steps: int
) -> Check:
    """An attacker allowed any image must drive pixel accuracy to ~0 (Carlini et al. §5.2).

    Two attacks, worst case per image: PGD on CE (the attack family being evaluated) and DAG,
    which pushes only the still-correct pixels towards wrong labels. PGD-CE alone plateaus on
    small CNNs at 5–11 % (its gradient keeps favouring pixels that are already wrong), which sat
    at the edge of the threshold; with DAG the worst case lands well below it (DAG_UNBOUNDED_STEPS).
    """
    worst: torch.Tensor | None = None
    for name, budget in (("pgd", steps), ("dag", max(steps, DAG_UNBOUNDED_STEPS))):
        attack = create_attack(name, ThreatModel(1.0), steps=budget, eot=eot, allow_random=True)
        adversarial = attack(model, images, labels).images
        with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
            accuracy = pixel_accuracy_per_image(model(adversarial), labels)
        worst = accuracy if worst is None else torch.minimum(worst, accuracy)
    assert worst is not None
    mean = float(worst.mean())
    status: Status = "pass" if mean <= UNBOUNDED_ACCURACY else "fail"
    return Check(
        "unbounded",
        status,
        f"PGD ({steps} steps) and DAG ({max(steps, DAG_UNBOUNDED_STEPS)} steps) with ε = 1 (any image allowed), "
        f"worst per image: pAcc {mean:.3f} (must be ≤ {UNBOUNDED_ACCURACY})",
    )


def accuracy_non_increasing_in_eps(evaluation: Evaluation) -> Check:
    clean_miou, clean_acc = evaluation.clean_scores()
    problems = []
    series = {
        key: [r for r in evaluation.runs if (r.attack, r.crafted_on) == key and r.kind == "white-box"]
        for key in dict.fromkeys((r.attack, r.crafted_on) for r in evaluation.runs)
    }
    for (attack, crafted_on), runs in series.items():
        name = f"{attack} (on {crafted_on})" if crafted_on else attack
        previous = (0.0, clean_acc, clean_miou)
        for run in sorted(runs, key=lambda r: r.eps):
            worst = run.worst()
            if worst.pixel_accuracy > previous[1] + TOLERANCE or worst.miou > previous[2] + TOLERANCE:
                problems.append(
                    f"{name}: ε {format_eps(run.eps)} gives pAcc {worst.pixel_accuracy:.4f} / mIoU {worst.miou:.4f} "
                    f"above ε {format_eps(previous[0])} ({previous[1]:.4f} / {previous[2]:.4f})"
                )
            previous = (run.eps, worst.pixel_accuracy, worst.miou)
    previous = (0.0, clean_acc, clean_miou)
    for eps in evaluation.eps_values():
        overall = evaluation.worst_at(eps)
        assert overall is not None
        if overall.pixel_accuracy > previous[1] + TOLERANCE or overall.miou > previous[2] + TOLERANCE:
            problems.append(f"worst case: ε {format_eps(eps)} above ε {format_eps(previous[0])}")
        previous = (eps, overall.pixel_accuracy, overall.miou)
    if problems:
        return Check("monotone", "fail", "; ".join(problems) + " — the attack is not converging (more iterations?)")
    return Check(
        "monotone",
        "pass",
        "neither a white-box attack's nor the worst case's pAcc or mIoU rises with ε (clean at ε = 0); "
        "random-search attacks are left to the white>black check",
    )


def gradients_are_usable(evaluation: Evaluation) -> Check:
    """Zero or NaN gradients mean masking. Part of soundness: a white-box attack that ran but
    recorded no gradient fails (premise present, nothing measured); without one it is n/a."""
    images = sum(r.gradients.images for r in evaluation.runs)
    zero = sum(r.gradients.zero for r in evaluation.runs)
    nan = sum(r.gradients.nan for r in evaluation.runs)
    detail = f"{images} per-image gradients: {zero} all-zero on images with correct pixels, {nan} with NaN"
    if nan or (images and zero / images > 0.01):
        return Check("gradients", "fail", detail + " — gradients are masked or broken; results overstate robustness")
    if not images and any(r.kind == "white-box" for r in evaluation.runs):
        return Check("gradients", "fail", "white-box attacks ran but recorded no gradient: cannot tell masking apart")
    return Check("gradients", "pass" if images else "n/a", detail if images else "no white-box attack was run")


def randomness_is_handled(model: nn.Module, images: torch.Tensor, *, eot: int, draws: int) -> Check:
    with torch.no_grad():
        first, second = model(images), model(images)
    if torch.equal(first, second):
        return Check("randomness", "pass", "the model is deterministic in eval mode")
    if eot > 1 and draws > 1:
        return Check(
            "randomness", "pass", f"randomised model: gradients over {eot} EOT draws, predictions over {draws} draws"
        )
    return Check(
        "randomness",
        "fail",
        f"two forward passes on the same input differ (a randomised model) but EOT = {eot}, draws = {draws}: "
        "attack with --eot 8 or more",
    )


def white_box_beats_black_box(evaluation: Evaluation) -> Check:
    problems = []
    for eps in evaluation.eps_values():
        white = evaluation.worst_at(eps, ("white-box",))
        black = evaluation.worst_at(eps, ("black-box", "transfer"))
        if white is None or black is None:
            continue
        if black.pixel_accuracy < white.pixel_accuracy - TOLERANCE or black.miou < white.miou - TOLERANCE:
            strongest = min(
                (r for r in evaluation.runs if r.eps == eps and r.kind in ("black-box", "transfer")),
                key=lambda r: r.worst().pixel_accuracy,
            )
            via = strongest.attack + (f" crafted on {strongest.crafted_on}" if strongest.crafted_on else "")
            problems.append(
                f"ε {format_eps(eps)}: black-box/transfer pAcc {black.pixel_accuracy:.4f} mIoU {black.miou:.4f} "
                f"(strongest: {via}) below white-box {white.pixel_accuracy:.4f} / {white.miou:.4f}"
            )
    if problems:
        return Check("white>black", "fail", "; ".join(problems) + " — a sign of gradient masking")
    return Check(
        "white>black", "pass", "white-box worst case is at least as strong as noise, query and transfer attacks"
    )


def white_box_beats_surrogate(evaluation: Evaluation) -> Check:
    """Each attack crafted on the model itself must be at least as strong as the same attack
    crafted on a surrogate (`evaluate_robustness(surrogates=...)`, e.g. a CRF model's unaries).
    The same attack with the same budget doing better through a surrogate means the model's own
    gradients mislead it: gradient masking (Arnab et al. §7.2, Fig. 4b)."""
    own = {(r.attack, r.eps): r.worst() for r in evaluation.runs if r.kind == "white-box"}
    problems, compared = [], 0
    for run in evaluation.runs:
        if not run.crafted_on or (run.attack, run.eps) not in own:
            continue
        compared += 1
        white, transfer = own[(run.attack, run.eps)], run.worst()
        if transfer.pixel_accuracy < white.pixel_accuracy - TOLERANCE or transfer.miou < white.miou - TOLERANCE:
            problems.append(
                f"{run.attack} ε {format_eps(run.eps)} crafted on {run.crafted_on}: pAcc {transfer.pixel_accuracy:.4f} "
                f"mIoU {transfer.miou:.4f} below white-box {white.pixel_accuracy:.4f} / {white.miou:.4f}"
            )
    if not compared:
        return Check("white>surrogate", "n/a", "no attack was crafted on a surrogate (e.g. a CRF model's unaries)")
    if problems:
        return Check(
            "white>surrogate",
            "fail",
            "; ".join(problems) + " — the model masks its gradients: report the surrogate's numbers, not these",
        )
    return Check("white>surrogate", "pass", f"{compared} attacks are at least as strong white-box as via a surrogate")


def iterative_beats_single_step(evaluation: Evaluation) -> Check:
    single = {"fgsm", "fgsm-ll"}
    problems, compared = [], False
    for eps in evaluation.eps_values():
        runs = [r for r in evaluation.runs if r.eps == eps and r.kind == "white-box"]
        one = [r.worst().pixel_accuracy for r in runs if r.attack in single]
        many = [r.worst().pixel_accuracy for r in runs if r.attack not in single]
        if one and many:
            compared = True
            if min(many) > min(one) + TOLERANCE:
                problems.append(
                    f"ε {format_eps(eps)}: best iterative pAcc {min(many):.4f} > single-step {min(one):.4f}"
                )
    if not compared:
        return Check("iterative>single", "n/a", "needs a single-step (fgsm) and an iterative white-box attack")
    if problems:
        return Check("iterative>single", "fail", "; ".join(problems))
    return Check("iterative>single", "pass", "iterative attacks are at least as strong as single-step ones")
