"""Pixel-wise attack objectives (SEA paper §3.1), all to be MAXIMISED by the attacker.

Every loss maps logits (B, K, H, W), labels (B, H, W) and the attack's progress t/T in [0, 1)
to a per-pixel loss (B, H, W) that is 0 on ignored pixels. An attack turns it into one value per
image with `image_loss` (the mean over the image's labelled pixels), so images in a batch never
compete for step size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harden.data.classes import IGNORE_INDEX

PixelLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _split(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels with ignored pixels set to class 0, bool mask of labelled pixels)."""
    valid = labels != IGNORE_INDEX
    return labels.where(valid, torch.zeros_like(labels)), valid


def is_top(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: `classes` (B, H, W, valid ids) holds the highest logit of each pixel.

    The same as `logits.argmax(1) == classes` except on exact ties, and about 100× cheaper on
    CPU: argmax over the class axis of a (B, K, H, W) tensor is a strided scan, amax is not.
    Attacks ask this every iteration; metrics still use argmax.
    """
    return logits.gather(1, classes.unsqueeze(1)).squeeze(1) >= logits.amax(1)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return is_top(logits, labels).to(logits.dtype)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """L_CE = −log p_y."""
    return F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """SegPGD (Gu et al.): CE weighted 1−λ on correct and λ on wrong pixels, λ(t) = (t−1)/(2T)."""
    lam = progress / 2
    safe, _ = _split(logits, labels)
    correct = _correct(logits, safe).detach()
    return ((1 - lam) * correct + lam * (1 - correct)) * cross_entropy(logits, labels)


def cosine_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """CosPGD (Agnihotri & Keuper): CE weighted by cos(σ(u), e_y) = σ(u_y)/‖σ(u)‖₂.

    The weight is a constant of the step (detached), as in CosPGD: it says how much a pixel
    matters, it is not itself optimised.
    """
    safe, _ = _split(logits, labels)
    sig = torch.sigmoid(logits)
    weight = sig.gather(1, safe.unsqueeze(1)).squeeze(1) / sig.norm(dim=1).clamp_min(1e-12)
    return weight.detach() * cross_entropy(logits, labels)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """CE on the pixels that are still correctly classified only."""
    safe, _ = _split(logits, labels)
    return _correct(logits, safe).detach() * cross_entropy(logits, labels)


def jensen_shannon(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """D_JS(softmax(u) ‖ e_y): bounded, and its gradient vanishes as p_y → 0, so pixels that are
    already fooled stop pulling on the perturbation without a mask.

    With m = (p + e_y)/2: KL(e_y‖m) = −log m_y, and KL(p‖m) = Σ_{k≠y} p_k log 2 + p_y log(p_y/m_y).
    """
    safe, valid = _split(logits, labels)
    p = logits.softmax(1)
    p_y = p.gather(1, safe.unsqueeze(1)).squeeze(1)
    m_y = (p_y + 1) / 2
    kl_p_m = (1 - p_y) * math.log(2) + p_y * (torch.log(p_y.clamp_min(1e-12)) - torch.log(m_y))
    kl_q_m = -torch.log(m_y)
    return valid * (kl_p_m + kl_q_m) / 2


def masked_spherical(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """−𝟙[correct] · u_y / ‖u‖₂: the correct logit on the unit sphere, on still-correct pixels."""
    safe, valid = _split(logits, labels)
    u_y = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    spherical = -u_y / logits.norm(dim=1).clamp_min(1e-12)
    return valid * _correct(logits, safe).detach() * spherical


def cosine_distance(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """1 − cos(u, e_y): the angle between the logit vector and the label's one-hot vector
    (PAdam-Cos, Halmosi et al. 2024). Scale-free, and it keeps pulling on a fooled pixel until its
    logits point away from y."""
    safe, valid = _split(logits, labels)
    u_y = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    return valid * (1 - u_y / logits.norm(dim=1).clamp_min(1e-12))


def balanced_masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """Mask-CE with every class of the image weighted equally: each still-correct pixel's CE
    times (labelled pixels) / (classes present × pixels of its class), so a small object's few
    pixels pull as hard as the road's many (Croce et al.'s class-balanced member; small objects
    are what a data-set mIoU counts as much as large ones)."""
    safe, valid = _split(logits, labels)
    classes = logits.shape[1]
    one_hot = F.one_hot(safe, classes).to(logits.dtype) * valid.unsqueeze(-1)  # (B, H, W, K)
    counts = one_hot.flatten(1, 2).sum(1)  # (B, K) pixels per class
    present = (counts > 0).sum(1).clamp_min(1).to(logits.dtype)  # (B,)
    labelled = valid.flatten(1).sum(1).to(logits.dtype)  # (B,)
    weight_of_class = labelled.unsqueeze(1) / (present.unsqueeze(1) * counts.clamp_min(1))  # (B, K)
    weight = weight_of_class.gather(1, safe.flatten(1)).view_as(safe) * valid
    return weight.detach() * _correct(logits, safe).detach() * cross_entropy(logits, labels)


LOSSES: dict[str, PixelLoss] = {
    "ce": cross_entropy,
    "bal-ce": balanced_cross_entropy,
    "cossim-ce": cosine_cross_entropy,
    "mask-ce": masked_cross_entropy,
    "jsd": jensen_shannon,
    "mask-sph": masked_spherical,
    "cosine": cosine_distance,
    "mask-ce-bal": balanced_masked_cross_entropy,
}


def image_loss(pixel_loss: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → (B,): mean over each image's labelled pixels (0 for an image with none)."""
    valid = (labels != IGNORE_INDEX).flatten(1)
    return pixel_loss.flatten(1).sum(1) / valid.sum(1).clamp_min(1)
