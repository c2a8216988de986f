"""The patch-attack template: Algorithm 1 of the RAM paper on the `Attack` template.

A patch attack may change only the pixels under a patch, to any value in [0, 1]. Its threat is
`PatchThreat` (ε = 1 under a mask), and its goal a target class per pixel (Permute or Strip,
RAM paper §5.1) or, untargeted, the ground truth to leave. The patch and the targets differ per
batch (a random place per image, targets drawn per batch), so a call takes both:

    attack(model, images, labels, targets=targets, mask=mask)  →  AttackOutput

`Attack.__call__` does the rest as for every attack: input checks, the refusal of a randomised
model without EOT, eval mode, the seeded RNG, the final projection into the threat.

A subclass writes one `objective` of the logits (and, for the attention-aware attacks, of the
attention read through `AttentionReader`); `perturb` ascends it with `patch_step`, the gradient
averaged over `eot` draws. Objectives are means over pixels rather than the paper's sums: the
step divides the gradient by its L∞ norm, so a constant factor changes nothing, and means keep
the attention terms' weight α meaningful across image sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from harden.attacks.attention_reader import AttentionReader
from harden.attacks.base import Attack, AttackOutput, GradientStats, checked_logits
from harden.attacks.patch import PatchThreat, patch_step
from harden.attacks.patch_losses import target_log_prob
from harden.attacks.threat import ThreatModel
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.models.attention import find_attention

DEFAULT_STEPS = 50  # T of Algorithm 1, scaled down from the paper's 400 for CPUs


@dataclass(frozen=True)
class PatchGoal:
    """What one call of a patch attack is after.

    labels: (B, H, W) ground truth.
    targets: (B, H, W) the class each pixel should become: the caller's targets, or (untargeted)
        a random wrong class per pixel, as in Xie et al.'s untargeted DAG.
    untargeted: the caller gave no targets; the log-probability attacks then push the true
        class down instead of the target up.
    mask: (B, 1, H, W) 1 under the patch.
    """

    labels: torch.Tensor
    targets: torch.Tensor
    untargeted: bool
    mask: torch.Tensor

    def log_prob_term(self, logits: torch.Tensor) -> torch.Tensor:
        """A1 / A9: log p(target), or −log p(true class) when untargeted."""
        return -target_log_prob(logits, self.labels) if self.untargeted else target_log_prob(logits, self.targets)


class PatchAttack(Attack):
    """Base class of the patch attacks (RAM paper Appendix A).

    Args:
        threat: ignored but for its type: each call sets the threat from its `mask`.
        steps: T of Algorithm 1 (the paper: 400; default 50).
        gamma: step scale γ (None: the attack's `default_gamma`: 0.005 for pgd, 1 otherwise).
        alpha: weight of the attention terms (attention-aware attacks only).
        eot, allow_random, seed: see `Attack`.
    """

    default_steps = DEFAULT_STEPS
    default_gamma: ClassVar[float] = 1.0
    reads_attention: ClassVar[bool] = False  # the objective reads attention matrices
    targeted_only: ClassVar[bool] = False  # the objective needs targets (RAM paper A.4–A.8)

    def __init__(
        self,
        threat: ThreatModel | None = None,
        *,
        gamma: float | None = None,
        alpha: float = 1.0,
        steps: int | None = None,
        eot: int = 1,
        allow_random: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(threat or PatchThreat(1.0), steps=steps, eot=eot, allow_random=allow_random, seed=seed)
        if gamma is not None and not gamma > 0:
            raise InputError(f"{self.name}: γ (--gamma) must be > 0, got {gamma}")
        if not alpha >= 0:
            raise InputError(f"{self.name}: α (--alpha) must be ≥ 0, got {alpha}")
        self.gamma = self.default_gamma if gamma is None else gamma
        self.alpha = alpha
        self._mask = torch.zeros(0)
        self._targets: torch.Tensor | None = None

    def __call__(  # type: ignore[override]
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mask: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> AttackOutput:
        """Adversarial `images`, changed only where `mask` (B, 1, H, W) is 1.

        targets: (B, H, W) target labels (Permute, Strip), or None for the untargeted attack.
        """
        if mask.shape != (images.shape[0], 1, *images.shape[2:]):
            raise InputError(f"the patch mask must be (B, 1, H, W) = {(images.shape[0], 1, *images.shape[2:])}, "
                             f"got {tuple(mask.shape)}")  # fmt: skip
        if self.reads_attention and not find_attention(model):
            raise InputError(f"{self.name} reads attention matrices, and this model has no attention layer")
        if targets is not None and targets.shape != labels.shape:
            raise InputError(
                f"targets must be (B, H, W) like the labels {tuple(labels.shape)}, got {tuple(targets.shape)}"
            )
        if targets is None and self.targeted_only:
            raise InputError(f"{self.name} is a targeted attack (RAM paper A.4–A.8): use --target permute or strip")
        self.threat = PatchThreat(1.0, mask=mask)
        self._mask, self._targets = mask, targets
        return super().__call__(model, images, labels)

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Algorithm 1: T steps of x ← clip(x + γ · r/‖r‖∞ ⊙ M), r the EOT-averaged gradient."""
        if self._targets is None:
            goal = PatchGoal(labels, random_wrong_labels(model, images, labels, self.seed), True, self._mask)
        else:
            goal = PatchGoal(labels, self._targets, False, self._mask)
        x = images.clone()
        for _ in range(self.steps):
            gradient = torch.zeros_like(x)
            for _ in range(self.eot):  # a fresh RAD draw per forward pass
                gradient += self.gradient(model, x, goal)
            x = patch_step(x, gradient / self.eot, goal.mask, self.gamma).detach()
        return x

    def gradient(self, model: nn.Module, x: torch.Tensor, goal: PatchGoal) -> torch.Tensor:
        """∇ₓ of the objective for one draw; NaNs counted and replaced by 0."""
        x = x.detach().requires_grad_(True)
        with AttentionReader(model, self.reads_attention) as reader:
            logits = checked_logits(model, x)
        (gradient,) = torch.autograd.grad(self.objective(logits, goal, reader), x)
        return self._counted(gradient)

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        """The scalar the attack ascends."""
        raise NotImplementedError

    def _counted(self, gradient: torch.Tensor) -> torch.Tensor:
        nan = torch.isnan(gradient).flatten(1).any(1)
        self._stats.add(GradientStats(images=gradient.shape[0], nan=int(nan.sum())))
        return torch.nan_to_num(gradient)


def random_wrong_labels(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, H, W) a random class other than the true one per pixel (ignored pixels stay ignored)."""
    with torch.no_grad():
        classes = int(checked_logits(model, images[:1]).shape[1])
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, classes, labels.shape, generator=generator).to(labels.device)
    return torch.where(labels == IGNORE_INDEX, labels, (labels + shift) % classes)
