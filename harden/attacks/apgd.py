"""APGD (Croce & Hein 2020) for segmentation, and its progressive-radius form used by SEA.

APGD is PGD with momentum 0.75 and a step size that starts at 2ε and is halved, per image, at
checkpoints where the attack stalls: at most ρ = 75 % of the steps since the last checkpoint
beat the previous iterate's loss, or the best loss did not improve since the last checkpoint
and the step was not halved there (Croce & Hein 2020 §3.2). A halving restarts the image from
its best-loss point. The loss picks the direction; the step-size rule and the restart point
follow cross-entropy for the masked and weighted losses (`APGD.tracks_cross_entropy`); the image
that is returned is the one with the LOWEST PIXEL ACCURACY seen (the quantity being evaluated).
A run of N iterations makes N updates: N + 1 evaluations, N gradients.

Targeted (`targeted=True`, the labels are then the attacker's target map): the loss against the
targets is DESCENDED, and the image returned is the one with the most pixels at their target.

Progressive radius reduction (SEA paper §3.3): the iterations are split 3:3:4 over radii 2ε,
1.5ε and ε; the best point of each stage, projected onto the next smaller ball, starts the next.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.attacks.base import Attack, checked_logits, unreached_per_image
from harden.attacks.losses import LOSSES, cross_entropy, image_loss
from harden.attacks.threat import ThreatModel
from harden.attacks.worst_case import LowestPerImage
from harden.errors import InputError

CONSTANT_RADIUS = ((1.0, 1.0),)
REDUCED_RADIUS = ((2.0, 0.3), (1.5, 0.3), (1.0, 0.4))  # (radius / ε, share of the iterations)
TRACKED_BY_CROSS_ENTROPY = frozenset({"mask-ce", "bal-ce", "mask-ce-bal"})  # see APGD.tracks_cross_entropy


def checkpoints(steps: int) -> list[int]:
    """Iterations where APGD may halve its step: w₁ = 0.22·N, then gaps shrinking by 0.03·N from
    0.19·N down to at least 0.06·N (Croce & Hein 2020 §3.2), in AutoAttack's integer form."""
    gap, shrink, floor = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, mark = [], gap
    while mark < steps:
        marks.append(mark)
        gap = max(gap - shrink, floor)
        mark += gap
    return marks


class APGD(Attack):
    """Auto-PGD in L∞ with a pixel loss.

    Args:
        threat, steps, eot, allow_random, seed, targeted: see `Attack` (steps: total over all stages).
        loss: a key of `LOSSES`; "ce" only when targeted (the others weigh pixels by whether
            they are still correct, which has no targeted reading).
        radii: ((radius / ε, share of the iterations), ...); `REDUCED_RADIUS` for SEA's red-ε.
        rho: checkpoint condition 1, the fraction of steps that must have raised the loss.
        momentum: weight of the new step against the previous one (0.75 in APGD).
    """

    name = "apgd"
    default_steps = 100
    supports_targeted = True

    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss: str = "ce",
        radii: tuple[tuple[float, float], ...] = CONSTANT_RADIUS,
        rho: float = 0.75,
        momentum: float = 0.75,
        name: str | None = None,
        **common: Any,
    ) -> None:
        if name is not None:
            self.name = name
        super().__init__(threat, **common)
        if threat.norm != "linf":
            raise InputError(f"{self.name} is implemented for L∞ only; use pgd or bim-l2 for L2")
        if self.targeted and loss != "ce":
            raise InputError(f"{self.name}: the targeted form descends cross-entropy to the target; loss {loss!r} "
                             "has no targeted reading")  # fmt: skip
        self.loss_name = loss
        self.loss = LOSSES[loss]
        self.radii = radii
        self.rho = rho
        self.momentum = momentum

    def stage_steps(self) -> list[tuple[float, int]]:
        """[(radius, iterations)] of each stage; iterations add up to `steps`, each at least 1."""
        counts = [max(1, round(share * self.steps)) for _, share in self.radii]
        counts[-1] = max(1, self.steps - sum(counts[:-1]))
        width = self.threat.high - self.threat.low
        return [(min(factor * self.threat.eps, width), n) for (factor, _), n in zip(self.radii, counts, strict=True)]

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        start: torch.Tensor | None = None
        stages = self.stage_steps()
        total, done = sum(n for _, n in stages), 0
        for radius, steps in stages:
            threat = self.threat.with_eps(radius)
            x0 = self.start_point(images, threat) if start is None else threat.project(start, images)
            start = self._stage(model, images, labels, threat, x0, steps, done, total)
            done += steps
        assert start is not None
        return start

    def tracks_cross_entropy(self) -> bool:
        """Whether the step-size rule and the restart point follow cross-entropy instead of the
        loss the gradient comes from. A masked or pixel-weighted loss FALLS as pixels flip (the
        attack succeeding looks like the loss stalling), so judged by its own value the best
        point stays early and the step is halved at nearly every checkpoint. Cross-entropy keeps
        rising while the attack works. Mask-CE and Bal-CE track CE, as in the SEA reference; JS
        (whose value rises as pixels flip) and Mask-Sph keep their own: JS tracking CE, as the
        reference does, measured weaker on pspnet_tiny at 8/255 (docs/attacks.md)."""
        return not self.targeted and self.loss_name in TRACKED_BY_CROSS_ENTROPY

    def _stage(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        x: torch.Tensor,
        steps: int,
        offset: int,
        total: int,
    ) -> torch.Tensor:
        """One APGD run: `steps` updates from x (steps + 1 evaluations, the last without a gradient);
        returns the point where the attacker had won most pixels. Loss schedules (Bal-CE's λ)
        run once over the whole attack (iterations offset… of `total`), across the red-ε stages:
        restarting λ at every radius, as the reference does, measured a weaker worst case at
        4/255 on segformer_tiny (bench/sea_strength.py, docs/attacks.md)."""
        sign = -1.0 if self.targeted else 1.0  # targeted: ascend the loss's negative

        def objective_at(step: int) -> Any:
            def objective(x_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                logits = checked_logits(model, x_var)
                return sign * image_loss(self.loss(logits, labels, (offset + step) / total), labels), logits

            return objective

        def tracked(loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            return image_loss(cross_entropy(logits, labels), labels) if self.tracks_cross_entropy() else loss

        def per_image(mask: torch.Tensor) -> torch.Tensor:
            return mask.view(-1, 1, 1, 1)

        loss, logits, grad = self.loss_and_grad(objective_at(0), x, labels)
        track = tracked(loss, logits)
        # the point where the attacker had won most pixels (what is returned; ties: the later point)
        most_won = LowestPerImage(
            {"x": x.clone()}, unreached_per_image(logits, labels, self.targeted), replace_ties=True
        )
        # the point of highest tracked loss and its gradient (where a halving restarts): keep the lowest −loss
        best = LowestPerImage({"x": x.clone(), "grad": grad.clone()}, -track)
        eta = torch.full_like(track, 2 * threat.eps)
        x_prev = x
        increases = torch.zeros_like(track)  # steps since the last checkpoint that beat the previous iterate
        last_checkpoint, best_then = 0, track.clone()
        halved_then = torch.ones_like(track, dtype=torch.bool)  # no "no progress" halving at the first checkpoint
        marks = set(checkpoints(steps))
        for k in range(1, steps + 1):
            alpha = 1.0 if k == 1 else self.momentum
            z = threat.project(x + per_image(eta) * grad.sign(), images)
            x_new = threat.project(x + alpha * (z - x) + (1 - alpha) * (x - x_prev), images)
            x_prev, x = x, x_new
            if k < steps:
                loss, logits, grad = self.loss_and_grad(objective_at(k), x, labels)
            else:  # the last point needs scoring, not a gradient
                logits = self.predict(model, x)
                loss = sign * image_loss(self.loss(logits, labels, (offset + steps) / total), labels)
            previous, track = track, tracked(loss, logits)
            increases += (track > previous).float()

            most_won.offer(unreached_per_image(logits, labels, self.targeted), x=x)
            best.offer(-track, x=x, grad=grad)

            if k in marks:
                # halve where at most ρ of the steps since the last checkpoint raised the loss, or
                # where the best loss did not move although the step was not just halved
                stalled = increases <= self.rho * (k - last_checkpoint)
                no_progress = ~halved_then & (-best.score <= best_then)
                halve = stalled | no_progress
                eta = torch.where(halve, eta / 2, eta)
                x = torch.where(per_image(halve), best["x"], x)
                grad = torch.where(per_image(halve), best["grad"], grad)
                increases.zero_()
                last_checkpoint, best_then, halved_then = k, -best.score, halve
        return most_won["x"]
