"""The two attack protocols of `harden attack`, each one call from a trained run to a summary.

- `robustness_protocol`: every L∞ attack at every ε, the worst case, the sanity checks
  (docs/design.md §6); its summary is `attack.json`.
- `patch_protocol`: the RAM paper's patch attacks (§5.1, Appendix A) with their checks; its
  summary is `patch_attack.json`.

Both resolve the randomness defaults (`eot_default`, `draws_default`) from the model, so a
randomised model (RAD) is attacked with EOT and predicted over several draws unless told
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from harden.attacks._registry import create_patch_attack
from harden.attacks.base import draws_default, eot_default, is_randomised
from harden.attacks.checks import Check, run_checks
from harden.attacks.evaluate import Evaluation, evaluate_robustness
from harden.attacks.patch import PatchMask
from harden.attacks.patch_attack import DEFAULT_STEPS
from harden.attacks.patch_evaluate import PatchEvaluation, evaluate_patch_attacks
from harden.attacks.patch_report import patch_summary
from harden.attacks.report import summarise
from harden.data import collate_pad
from harden.models.crf import crf_unaries
from harden.run import OpenedRun


@dataclass
class RobustnessResult:
    evaluation: Evaluation
    checks: list[Check]
    summary: dict[str, Any]  # attack.json


def robustness_protocol(
    run: OpenedRun,
    attacks: list[str],
    eps_values: list[float],
    *,
    iters: int | None = None,
    eot: int | None = None,
    draws: int | None = None,
    allow_random: bool = False,
    seed: int = 0,
    source: tuple[Path, nn.Module] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    examples: int = 4,
    progress: bool = False,
) -> RobustnessResult:
    """Attack `run.model` (or, with `source`, craft on that run's model and transfer) on
    `run.dataset`, then run the sanity checks on its first 4 images."""
    source_model = source[1] if source is not None else None
    randomised = is_randomised(run.model) or (source_model is not None and is_randomised(source_model))
    eot = eot_default(randomised and not allow_random, eot)
    # A CRF's mean field can mask gradients (Arnab et al. §7): also craft on its unaries.
    unaries = crf_unaries(run.model) if source_model is None else None
    evaluation = evaluate_robustness(
        run.model, run.dataset, attacks, eps_values, steps=iters, eot=eot, allow_random=allow_random, seed=seed,
        draws=draws, source=source_model, surrogates={"unaries": unaries} if unaries is not None else None,
        batch_size=batch_size, device=device, examples=examples, progress=progress,
    )  # fmt: skip
    images, labels = collate_pad([run.dataset[i] for i in range(min(4, len(run.dataset)))])
    checks = run_checks(evaluation, run.model, images.to(device), labels.to(device), eot=eot)
    meta = {
        "run_dir": str(run.run_dir), "model": run.model_config.name, "ram": run.model_config.ram, "data": run.data,
        "split": run.split, "attacks": attacks, "iters": iters, "eot": eot, "seed": seed,
        "source": str(source[0]) if source is not None else None,
    }  # fmt: skip
    return RobustnessResult(evaluation, checks, summarise(evaluation, checks, meta))


@dataclass
class PatchResult:
    evaluation: PatchEvaluation
    checks: list[Check]
    summary: dict[str, Any]  # patch_attack.json


def patch_protocol(
    run: OpenedRun,
    attacks: list[str],
    patch: PatchMask,
    target: str = "permute",
    *,
    stripes: int = 4,
    iters: int | None = None,
    gamma: float | None = None,
    alpha: float = 1.0,
    eot: int | None = None,
    draws: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    examples: int = 4,
    progress: bool = False,
) -> PatchResult:
    """Every patch attack on every image of `run.dataset` (`evaluate_patch_attacks`)."""
    randomised = is_randomised(run.model)
    eot, draws = eot_default(randomised, eot), draws_default(randomised, draws)
    steps = iters or DEFAULT_STEPS
    crafted = [create_patch_attack(n, steps=steps, gamma=gamma, alpha=alpha, eot=eot, seed=seed) for n in attacks]
    evaluation = evaluate_patch_attacks(
        run.model, run.dataset, crafted, patch, target, stripes=stripes, draws=draws, seed=seed,
        batch_size=batch_size, device=device, examples=examples, progress=progress,
    )  # fmt: skip
    checks = evaluation.checks()
    meta = {
        "run_dir": str(run.run_dir), "model": run.model_config.name, "ram": run.model_config.ram,
        "patch": patch.size, "location": patch.location, "target": target,
        "stripes": stripes if target == "strip" else None, "iters": steps, "gamma": gamma, "alpha": alpha,
        "eot": eot, "draws": draws, "seed": seed,
    }  # fmt: skip
    return PatchResult(evaluation, checks, patch_summary(evaluation, checks, meta))
