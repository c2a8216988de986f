"""The pixel objectives of the RAM paper's patch attacks (Appendix A), as scalars to ascend.

Each is a mean over the pixels that have a target (ignored pixels excluded), so that its scale
does not depend on the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harden.data.classes import IGNORE_INDEX

IPATCH_EPS = 1e-10  # ε of A5, inside the log of the one-hot target


def _valid_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = targets != IGNORE_INDEX
    return valid, targets.where(valid, torch.zeros_like(targets))


def target_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A1 / A9: mean log p(target) over the pixels that have a target."""
    valid, safe = _valid_targets(targets)
    log_p = logits.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
    return (log_p * valid).sum() / valid.sum().clamp_min(1)


def dag_margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A2–A3: z_target − z_true over the pixels still predicted as their true class."""
    valid, safe_targets = _valid_targets(targets)
    valid &= labels != IGNORE_INDEX
    safe_labels = labels.where(valid, torch.zeros_like(labels))
    active = valid & (logits.argmax(1) == safe_labels)
    z_target = logits.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    z_true = logits.gather(1, safe_labels.unsqueeze(1)).squeeze(1)
    return ((z_target - z_true) * active).sum() / valid.sum().clamp_min(1)


def ipatch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A4–A5, negated to be ascended: −KL(onehot(target) ‖ p) with ε = 1e−10."""
    valid, safe = _valid_targets(targets)
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    kl = (onehot * (torch.log(onehot + IPATCH_EPS) - logits.log_softmax(1))).sum(1)
    return -(kl * valid).sum() / valid.sum().clamp_min(1)


def ssap_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A6–A8: η Σ_{not yet target} log p_t + (1 − η) Σ_{at target} log p_t, η = share not yet at target."""
    valid, safe = _valid_targets(targets)
    log_p = logits.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
    missing = valid & (logits.argmax(1) != safe)
    eta = missing.sum() / valid.sum().clamp_min(1)
    reached = valid & ~missing
    return (eta * (log_p * missing).sum() + (1 - eta) * (log_p * reached).sum()) / valid.sum().clamp_min(1)
