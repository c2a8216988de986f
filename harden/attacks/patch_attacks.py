"""The patch attacks of the RAM paper's Appendix A, as objectives on Algorithm 1 (`patch.py`).

Every attack ascends an objective of the model's logits (and, for the attention-aware ones, of
the attention matrices read through `AttentionCore`'s hooks) with `patch_step`; each iterate
changes only the pixels under the patch. Objectives are means over pixels rather than the
paper's sums: the step divides the gradient by its L∞ norm, so a constant factor changes
nothing, and means keep the attention terms' weight α meaningful across image sizes.

- pgd (A1): log-probability of the target class;            γ = 0.005 in the paper
- dag (A2–A3): z_target − z_true over the pixels still predicted as their true class;
- ipatch (A4–A5): −KL(onehot(target) ‖ softmax), ε = 1e−10;
- ssap (A6–A8): log p_target, weighted η on pixels not yet at the target, 1−η on the others;
- maxvar-dag (A16): dag + α · variance of the attention matrices;
- maxattn-dag (A17): dag + α · attention mass that queries put on keys under the patch;
- attention-fool (A13–A15): log p_target + α · log-sum-exp over layers and heads of the mean
  query–key logit towards the patch;
- patch-fool (A9–A12): log p_target plus, per layer, α times the gradient of the attention mass
  on the patch, with the conflicting part removed by the β projection of eq. A12;
- eot: dag with its gradient averaged over `eot` RAD draws (the adaptive attack on RAD).
Any attack takes `eot` > 1; a randomised model (RAD) without it is refused, as for L∞ attacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from harden.attacks.base import checked_logits, is_randomised
from harden.attacks.patch import patch_step
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.models.attention import AttentionCore, AttentionTrace, find_attention

PATCH_ATTACKS: Final = (
    "pgd", "dag", "ipatch", "ssap", "maxvar-dag", "maxattn-dag", "attention-fool", "patch-fool", "eot", "autoattack",
)  # fmt: skip
ATTENTION_AWARE: Final = ("maxvar-dag", "maxattn-dag", "attention-fool", "patch-fool")
TARGETED_ONLY: Final = ("ipatch", "ssap")
DEFAULT_STEPS: Final = 50  # T of Algorithm 1, scaled down from the paper's 400 for CPUs
DEFAULT_GAMMA: Final = {"pgd": 0.005}  # Appendix A.1; 1 for every other attack
IPATCH_EPS: Final = 1e-10


@dataclass(frozen=True)
class PatchAttack:
    """Args:
    name: one of PATCH_ATTACKS.
    steps: T of Algorithm 1 (the paper: 400).
    gamma: step scale γ (None: 0.005 for pgd, 1 otherwise, as in the paper).
    alpha: weight of the attention terms.
    eot: gradients averaged over this many RAD draws (the "eot" attack defaults to 8).
    seed: seeds the RAD draws; same seed → same patch.
    """

    name: str
    steps: int = DEFAULT_STEPS
    gamma: float | None = None
    alpha: float = 1.0
    eot: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in PATCH_ATTACKS:
            raise InputError(f"unknown patch attack {self.name!r}; choose from {', '.join(PATCH_ATTACKS)}")
        if self.steps < 1 or self.eot < 1:
            raise InputError(f"{self.name}: steps and EOT draws must be ≥ 1, got {self.steps} and {self.eot}")
        if self.gamma is not None and not self.gamma > 0:
            raise InputError(f"{self.name}: γ must be > 0, got {self.gamma}")
        if not self.alpha >= 0:
            raise InputError(f"{self.name}: α must be ≥ 0, got {self.alpha}")

    @property
    def draws(self) -> int:
        return 8 if self.name == "eot" and self.eot == 1 else self.eot

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
                 mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Adversarial images: `images` changed only where `mask` (B, 1, H, W) is 1.

        targets: (B, H, W) target labels (Permute, Strip), or None for the untargeted attack:
        the log-probability attacks then push the true class down, the DAG family pushes every
        pixel towards a random wrong class (Xie et al.'s untargeted DAG).
        """
        if self.draws == 1 and is_randomised(model):
            raise InputError(
                f"{self.name}: the model is randomised (RAD); attack it with EOT (--eot 8) or the 'eot' attack"
            )
        if self.name in ATTENTION_AWARE and not find_attention(model):
            raise InputError(f"{self.name} reads attention matrices, and this model has no attention layer")
        if targets is None and self.name in TARGETED_ONLY:
            raise InputError(f"{self.name} is a targeted attack (RAM paper A.4–A.5): use --target permute or strip")
        if self.name == "autoattack":
            return self._autoattack(model, images, labels, targets, mask)
        gamma = self.gamma if self.gamma is not None else DEFAULT_GAMMA.get(self.name, 1.0)
        was_training = model.training
        model.eval()  # before any forward pass: a training-mode pass would update BatchNorm statistics
        x = images.detach().clone()
        try:
            with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                untargeted = targets is None
                if targets is None:
                    classes = _classes(model, images)
                    generator = torch.Generator().manual_seed(self.seed)
                    shift = torch.randint(1, classes, labels.shape, generator=generator).to(labels.device)
                    targets = torch.where(labels == IGNORE_INDEX, labels, (labels + shift) % classes)
                for _ in range(self.steps):
                    gradient = torch.zeros_like(x)
                    for _ in range(self.draws):  # a fresh RAD draw per forward pass
                        gradient += self._gradient(model, x, labels, targets, mask, untargeted)
                    x = patch_step(x, gradient / self.draws, mask, gamma).detach()
        finally:
            model.train(was_training)
        return x

    def _autoattack(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    targets: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """A.8: APGD-CE (`steps` iterations) and Square (10 × `steps` queries, its windows inside
        the patch) with the patch as threat model; per image, the result with fewer pixels left
        to win: still correct (untargeted) or not yet at their target (targeted: APGD descends
        the cross-entropy to the target, Square the target's margin)."""
        from harden.attacks.apgd import APGD
        from harden.attacks.base import unreached_per_image
        from harden.attacks.patch import PatchThreat
        from harden.attacks.square import Square
        from harden.attacks.worst_case import LowestPerImage
        from harden.ram import fixed_rad_seed

        threat, targeted = PatchThreat(1.0, mask=mask), targets is not None
        goal = targets if targets is not None else labels
        best = LowestPerImage({"images": images})
        apgd = APGD(threat, steps=self.steps, eot=self.draws, seed=self.seed, targeted=targeted, name="apgd-ce")
        square = Square(threat, steps=10 * self.steps, eot=self.draws, seed=self.seed, targeted=targeted)
        for attack in (apgd, square):
            candidate = attack(model, images, goal).images
            with torch.no_grad(), fixed_rad_seed(model, self.seed):
                left = unreached_per_image(model(candidate), goal, targeted)
            best.offer(left, images=candidate)
        return best["images"]

    def _gradient(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                  mask: torch.Tensor, untargeted: bool) -> torch.Tensor:  # fmt: skip
        x = x.detach().requires_grad_(True)
        with _AttentionReader(model, self.name in ATTENTION_AWARE) as reader:
            logits = checked_logits(model, x)
        target_term = -_target_log_prob(logits, labels) if untargeted else _target_log_prob(logits, targets)
        if self.name == "patch-fool":
            return _patch_fool_gradient(x, target_term, reader.patch_mass_per_layer(mask), self.alpha)
        objective = {
            "pgd": lambda: target_term,
            "dag": lambda: _dag(logits, labels, targets),
            "eot": lambda: _dag(logits, labels, targets),
            "ipatch": lambda: _ipatch(logits, targets),
            "ssap": lambda: _ssap(logits, targets),
            "maxvar-dag": lambda: _dag(logits, labels, targets) + self.alpha * reader.variance(),
            "maxattn-dag": lambda: _dag(logits, labels, targets) + self.alpha * reader.patch_mass(mask),
            "attention-fool": lambda: target_term + self.alpha * reader.key_query_logsumexp(mask),
        }[self.name]()
        (gradient,) = torch.autograd.grad(objective, x)
        return torch.nan_to_num(gradient)


def _classes(model: nn.Module, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(checked_logits(model, images[:1]).shape[1])


def _valid_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = targets != IGNORE_INDEX
    return valid, targets.where(valid, torch.zeros_like(targets))


def _target_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A1 / A9: mean log p(target) over the pixels that have a target."""
    valid, safe = _valid_targets(targets)
    log_p = logits.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
    return (log_p * valid).sum() / valid.sum().clamp_min(1)


def _dag(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A2–A3: z_target − z_true over the pixels still predicted as their true class."""
    valid, safe_targets = _valid_targets(targets)
    valid &= labels != IGNORE_INDEX
    safe_labels = labels.where(valid, torch.zeros_like(labels))
    active = valid & (logits.argmax(1) == safe_labels)
    z_target = logits.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    z_true = logits.gather(1, safe_labels.unsqueeze(1)).squeeze(1)
    return ((z_target - z_true) * active).sum() / valid.sum().clamp_min(1)


def _ipatch(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A4–A5, negated to be ascended: −KL(onehot(target) ‖ p) with ε = 1e−10."""
    valid, safe = _valid_targets(targets)
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    kl = (onehot * (torch.log(onehot + IPATCH_EPS) - logits.log_softmax(1))).sum(1)
    return -(kl * valid).sum() / valid.sum().clamp_min(1)


def _ssap(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A6–A8: η Σ_{not yet target} log p_t + (1 − η) Σ_{at target} log p_t, η = share not yet at target."""
    valid, safe = _valid_targets(targets)
    log_p = logits.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
    missing = valid & (logits.argmax(1) != safe)
    eta = missing.sum() / valid.sum().clamp_min(1)
    reached = valid & ~missing
    return (eta * (log_p * missing).sum() + (1 - eta) * (log_p * reached).sum()) / valid.sum().clamp_min(1)


def _patch_fool_gradient(
    x: torch.Tensor, ce: torch.Tensor, layer_mass: list[torch.Tensor], alpha: float
) -> torch.Tensor:
    """A11–A12: ∇CE + α Σ_l (∇ATTN_l − β_l ∇CE), β_l = 0 when the two gradients agree, else
    ⟨∇CE, ∇ATTN_l⟩ / ‖∇CE‖² (per image)."""
    (g_ce,) = torch.autograd.grad(ce, x, retain_graph=True)
    total = g_ce.clone()
    for i, mass in enumerate(layer_mass):
        (g_attn,) = torch.autograd.grad(mass, x, retain_graph=i < len(layer_mass) - 1)
        inner = (g_ce * g_attn).flatten(1).sum(1)
        beta = torch.where(inner > 0, torch.zeros_like(inner), inner / g_ce.flatten(1).square().sum(1).clamp_min(1e-24))
        total += alpha * (g_attn - beta.view(-1, 1, 1, 1) * g_ce)
    return torch.nan_to_num(total)


class _AttentionReader:
    """Records the attention of every layer whose keys form a grid over the image during one
    forward pass (global attention: SegFormer, ViT, non-local; Swin's windows are skipped)."""

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model, self.enabled = model, enabled
        self.traces: list[tuple[AttentionTrace, tuple[int, int]]] = []
        self.image_size: tuple[int, int, int] = (0, 0, 0)
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> _AttentionReader:
        if self.enabled:
            self.handles = [core.register_attention_hook(self._record) for _, core in find_attention(self.model)]
            self.handles.append(self.model.register_forward_pre_hook(self._size))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _size(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        batch, _, height, width = args[0].shape
        self.image_size = (batch, height, width)

    def _record(self, core: AttentionCore, trace: AttentionTrace) -> None:
        batch, height, width = self.image_size
        grid = key_grid(trace.attention.shape[-1], height, width)
        if grid is not None and trace.attention.shape[0] == batch:
            self.traces.append((trace, grid))

    def _read(self) -> list[tuple[AttentionTrace, tuple[int, int]]]:
        if not self.traces:
            raise InputError(
                "no attention layer of this model attends over the whole image (keys on a grid of the image), "
                "so attention-aware patch attacks have nothing to read; use dag, ipatch or eot"
            )
        return self.traces

    def variance(self) -> torch.Tensor:
        """A16: mean over layers of the variance of the attention matrix (per row, over keys)."""
        return torch.stack([trace.attention.var(-1).mean() for trace, _ in self._read()]).mean()

    def patch_mass_per_layer(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """A10 / A17 per layer: attention every query puts on keys under the patch, averaged
        over queries and heads (a key counts by the share of its cell the patch covers)."""
        masses = []
        for trace, grid in self._read():
            cover = F.adaptive_avg_pool2d(mask, grid).flatten(1)  # (B, Nk)
            masses.append((trace.attention * cover[:, None, None, :]).sum(-1).mean())
        return masses

    def patch_mass(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.patch_mass_per_layer(mask)).mean()

    def key_query_logsumexp(self, mask: torch.Tensor) -> torch.Tensor:
        """A13–A14: L_kq^{hl} = mean over queries of the logit towards the patch keys; then
        log Σ_l exp(log Σ_h exp(L_kq^{hl}))."""
        per_layer = []
        for trace, grid in self._read():
            cover = F.adaptive_avg_pool2d(mask, grid).flatten(1)  # (B, Nk)
            weight = cover / cover.sum(1, keepdim=True).clamp_min(1e-12)
            to_patch = (trace.logits * weight[:, None, None, :]).sum(-1).mean(-1)  # (B, heads)
            per_layer.append(torch.logsumexp(to_patch, dim=1))  # (B,)
        return torch.logsumexp(torch.stack(per_layer, 1), dim=1).mean()


def key_grid(keys: int, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) with h·w = keys and h/w the image's aspect ratio, or None (tokens that are not a
    grid over the whole image: windows, class tokens)."""
    if keys < 1:
        return None
    rows = round(math.sqrt(keys * height / width))
    if rows < 1 or keys % rows:
        return None
    cols = keys // rows
    return (rows, cols) if abs(rows / cols - height / width) <= 0.1 * height / width else None
