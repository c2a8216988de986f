"""The attack template: `Attack.__call__` does the bookkeeping, subclasses write `perturb`.

`__call__` checks the inputs, refuses a randomised model without EOT, puts the model in eval
mode and restores its mode afterwards, seeds torch's RNG for the attack only (so a fixed seed
gives the same perturbation and the caller's RNG is untouched), and projects the result into
the threat model once more. Gradients are taken with `torch.autograd.grad` with respect to the
input only: an attack never writes `.grad` of a parameter nor changes a weight.

`loss_and_grad` is the one place gradients come from: it averages them over the EOT draws of a
randomised model (Athalye et al.'s Expectation over Transformation; for RAD the transformation
is the random attention mask) and counts zero and NaN gradients for the sanity checks
(docs/design.md §6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from harden.attacks.losses import is_top
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.ram.robust_attention import seeded_modules

# forward(x) → (per-image loss to maximise (B,), logits (B, K, H, W))
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GradientStats:
    """How many per-image gradients an attack computed, and how many were all-zero or had NaNs."""

    images: int = 0
    zero: int = 0
    nan: int = 0

    def add(self, other: GradientStats) -> None:
        self.images += other.images
        self.zero += other.zero
        self.nan += other.nan


@dataclass
class AttackOutput:
    images: torch.Tensor  # (B, 3, H, W) adversarial images inside the threat model
    gradients: GradientStats


def is_randomised(model: nn.Module) -> bool:
    """Whether the model draws randomness in eval mode that no fixed seed pins: RAD layers
    (or a deployed graph with RAD, run through runtime's twin or engine wrapper)."""
    return any(m.drops and m.seeds.fixed is None for m in seeded_modules(model))


# A randomised model (RAD) is attacked with gradients averaged over EOT draws and evaluated as the
# worst over several fixed-seed draws (docs/design.md §6); a deterministic model needs one of each.
RANDOMISED_EOT = 8
RANDOMISED_DRAWS = 3


def eot_default(randomised: bool, eot: int | None = None) -> int:
    """EOT draws per gradient: `eot` when given, else 8 for a randomised model and 1 otherwise."""
    return eot if eot is not None else (RANDOMISED_EOT if randomised else 1)


def draws_default(randomised: bool, draws: int | None = None) -> int:
    """Evaluation draws: `draws` when given, else 3 for a randomised model and 1 otherwise."""
    return draws if draws is not None else (RANDOMISED_DRAWS if randomised else 1)


def pixel_accuracy_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of each image's labelled pixels predicted correctly (1 where none is labelled)."""
    valid = labels != IGNORE_INDEX
    correct = (is_top(logits, labels.where(valid, torch.zeros_like(labels))) & valid).flatten(1).sum(1)
    total = valid.flatten(1).sum(1)
    return torch.where(total > 0, correct / total.clamp_min(1), torch.ones_like(correct, dtype=torch.float))


def unreached_per_image(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(B,) the share of each image's pixels the attacker has not yet won: still correct
    (untargeted, `goal` = labels) or not yet at their target class (targeted, `goal` = targets).
    Lower is better for the attacker either way, so attacks keep their best point by one rule."""
    accuracy = pixel_accuracy_per_image(logits, goal)
    return 1 - accuracy if targeted else accuracy


class Attack:
    """Base class of every attack.

    Args:
        threat: the allowed perturbations.
        steps: iterations (gradient attacks) or queries (score-based attacks); None: the attack's default.
        eot: gradients averaged over this many draws of a randomised model (1: no EOT).
        allow_random: attack a randomised model without EOT anyway (the result overstates robustness).
        seed: seeds random starts, EOT draws and random search; same seed → same perturbation.
        targeted: the `labels` given to the attack are the attacker's TARGET classes, to be
            reached rather than left (only attacks with `supports_targeted`: APGD, Square).
    """

    name: str = "attack"  # an instance may rename itself (registry variants, SEA members)
    default_steps: ClassVar[int] = 10
    needs_eot: ClassVar[bool] = True  # False only where the model's randomness cannot mislead the attack
    supports_targeted: ClassVar[bool] = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int | None = None,
        eot: int = 1,
        allow_random: bool = False,
        seed: int = 0,
        targeted: bool = False,
    ) -> None:
        steps = self.default_steps if steps is None else steps
        if targeted and not self.supports_targeted:
            raise InputError(f"{self.name} has no targeted form; targeted attacks: apgd, square")
        if steps < 1:
            raise InputError(f"{self.name}: iterations must be ≥ 1, got {steps}")
        if eot < 1:
            raise InputError(f"{self.name}: --eot must be ≥ 1, got {eot}")
        self.threat = threat
        self.steps = steps
        self.eot = eot
        self.allow_random = allow_random
        self.seed = seed
        self.targeted = targeted
        self._stats = GradientStats()
        # where an iterative attack starts instead of a random point of the ball: set by an
        # ensemble that continues from its worst image so far (harden.attacks.strongest)
        self.start_from: torch.Tensor | None = None

    # -- the template -------------------------------------------------------------------------

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> AttackOutput:
        """Adversarial versions of `images` (B, 3, H, W) in the box, for `labels` (B, H, W)."""
        self._check_inputs(images, labels)
        if self.needs_eot and self.eot == 1 and not self.allow_random and is_randomised(model):
            raise InputError(
                f"{self.name}: the model is randomised (RAD draws a new attention mask every forward pass), "
                "so single-draw gradients and scores are noisy and the attack would overstate "
                "robustness. Attack it with EOT (--eot 8, or eot=8), or pass --allow-random to do it anyway."
            )
        was_training = model.training
        model.eval()
        self._stats = GradientStats()
        devices = [images.device] if images.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                adversarial = self.perturb(model, images.detach(), labels)
        finally:
            model.train(was_training)
        adversarial = self.threat.project(adversarial.detach(), images)
        return AttackOutput(adversarial, self._stats)

    def start_point(self, images: torch.Tensor, threat: ThreatModel | None = None) -> torch.Tensor:
        """The first iterate in `threat` (default: the attack's): `start_from` when an ensemble set
        it, else a uniform point of the ball."""
        threat = self.threat if threat is None else threat
        if self.start_from is not None:
            return threat.project(self.start_from.to(images.device), images)
        return threat.random_start(images)

    def run_members(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, AttackOutput]:
        """Every candidate the attack produces; an ensemble (SEA) returns one per member."""
        return {self.name: self(model, images, labels)}

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The subclass's algorithm. images are clean and detached; return adversarial images."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------------

    def loss_and_grad(
        self, objective: Objective, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-image loss (B,), logits (B, K, H, W), ∇ₓ loss) averaged over the EOT draws.

        NaN gradients are counted and replaced by 0, so one bad pixel cannot poison the image.
        An all-zero gradient is counted only for an image the attacker has not fully won yet
        (a fully fooled image has nothing left to push under the masked losses).
        """
        loss_sum = torch.zeros(x.shape[0], device=x.device)
        logits_sum: torch.Tensor | None = None
        grad_sum = torch.zeros_like(x)
        for _ in range(self.eot):
            x_var = x.detach().requires_grad_(True)
            loss, logits = objective(x_var)
            (grad,) = torch.autograd.grad(loss.sum(), x_var)
            loss_sum += loss.detach()
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
            grad_sum += grad
        assert logits_sum is not None
        grad = grad_sum / self.eot
        nan = torch.isnan(grad).flatten(1).any(1)
        grad = torch.nan_to_num(grad, nan=0.0)
        logits = logits_sum / self.eot
        zero = grad.flatten(1).abs().amax(1) == 0
        if zero.any():  # rare: only then is it worth asking whether the image had pixels left to flip
            zero &= unreached_per_image(logits, labels, self.targeted) > 0
        self._stats.add(GradientStats(images=x.shape[0], zero=int(zero.sum()), nan=int(nan.sum())))
        return loss_sum / self.eot, logits, grad

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits without gradients, averaged over the EOT draws."""
        with torch.no_grad():
            return torch.stack([checked_logits(model, x) for _ in range(self.eot)]).mean(0)

    @staticmethod
    def _check_inputs(images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0], *images.shape[2:]):
            raise InputError(
                f"labels must be (B, H, W) = {(images.shape[0], *images.shape[2:])}, got {tuple(labels.shape)}"
            )
        if not torch.isfinite(images).all():
            raise InputError("images contain NaN or infinite values")
        if images.min() < 0 or images.max() > 1:
            raise InputError("images must be in [0, 1] (docs/design.md §2); normalisation happens inside the model")


def checked_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x), checked by `check_logits`."""
    return check_logits(model(x), x)


def check_logits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Refuse outputs that are not (B, K, H, W) logits at the resolution of x."""
    if logits.dim() != 4 or logits.shape[0] != x.shape[0] or logits.shape[-2:] != x.shape[-2:]:
        raise InputError(
            f"the model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; attacks need "
            "logits (B, K, H, W) at input resolution (docs/design.md §2)"
        )
    return logits
