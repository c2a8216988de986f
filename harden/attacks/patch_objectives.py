"""The patch attacks of the RAM paper's Appendix A: one class per objective, on `PatchAttack`.

| attack         | objective ascended                                               | paper   |
|----------------|------------------------------------------------------------------|---------|
| pgd            | log p(target), γ = 0.005                                         | A1      |
| dag            | z_target − z_true on the pixels still predicted as their class   | A2–A3   |
| ipatch         | −KL(onehot(target) ‖ softmax); targeted only                     | A4–A5   |
| ssap           | log p(target), η on pixels not yet at the target, 1−η on others  | A6–A8   |
| maxvar-dag     | dag + α · variance of the attention matrices                     | A16     |
| maxattn-dag    | dag + α · attention mass queries put on keys under the patch     | A17     |
| attention-fool | log p(target) + α · log-sum-exp of the query–key logits to the patch | A13–A15 |
| patch-fool     | log p(target) + α · per-layer attention on the patch, β-projected | A9–A12  |
| eot            | dag with its gradient averaged over 8 RAD draws (adaptive to RAD) |         |

autoattack (A.8) runs APGD and Square inside the patch: `patch_autoattack.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harden.attacks.attention_reader import AttentionReader
from harden.attacks.base import RANDOMISED_EOT, checked_logits
from harden.attacks.patch_attack import PatchAttack, PatchGoal
from harden.attacks.patch_losses import dag_margin, ipatch_loss, ssap_loss
from harden.attacks.threat import ThreatModel


class PatchPGD(PatchAttack):
    name = "pgd"
    default_gamma = 0.005  # Appendix A.1

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return goal.log_prob_term(logits)


class PatchDAG(PatchAttack):
    name = "dag"

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return dag_margin(logits, goal.labels, goal.targets)


class PatchEOT(PatchDAG):
    """DAG with EOT: `eot` 1 (the default) means the adaptive attack's 8 draws."""

    name = "eot"

    def __init__(self, threat: ThreatModel | None = None, *, eot: int = 1, **options: Any) -> None:
        super().__init__(threat, eot=RANDOMISED_EOT if eot == 1 else eot, **options)


class IPatch(PatchAttack):
    name = "ipatch"
    targeted_only = True

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return ipatch_loss(logits, goal.targets)


class SSAP(PatchAttack):
    name = "ssap"
    targeted_only = True

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return ssap_loss(logits, goal.targets)


class MaxVarDAG(PatchAttack):
    name = "maxvar-dag"
    reads_attention = True

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return dag_margin(logits, goal.labels, goal.targets) + self.alpha * reader.variance()


class MaxAttnDAG(PatchAttack):
    name = "maxattn-dag"
    reads_attention = True

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return dag_margin(logits, goal.labels, goal.targets) + self.alpha * reader.patch_mass(goal.mask)


class AttentionFool(PatchAttack):
    name = "attention-fool"
    reads_attention = True

    def objective(self, logits: torch.Tensor, goal: PatchGoal, reader: AttentionReader) -> torch.Tensor:
        return goal.log_prob_term(logits) + self.alpha * reader.key_query_logsumexp(goal.mask)


class PatchFool(PatchAttack):
    """A9–A12: not one objective but a combination of gradients, so it writes `gradient`."""

    name = "patch-fool"
    reads_attention = True

    def gradient(self, model: nn.Module, x: torch.Tensor, goal: PatchGoal) -> torch.Tensor:
        """∇CE + α Σ_l (∇ATTN_l − β_l ∇CE), β_l = 0 when the two gradients agree, else
        ⟨∇CE, ∇ATTN_l⟩ / ‖∇CE‖² (per image)."""
        x = x.detach().requires_grad_(True)
        with AttentionReader(model) as reader:
            logits = checked_logits(model, x)
        layer_mass = reader.patch_mass_per_layer(goal.mask)
        (g_ce,) = torch.autograd.grad(goal.log_prob_term(logits), x, retain_graph=True)
        total = g_ce.clone()
        for i, mass in enumerate(layer_mass):
            (g_attn,) = torch.autograd.grad(mass, x, retain_graph=i < len(layer_mass) - 1)
            inner = (g_ce * g_attn).flatten(1).sum(1)
            squared = g_ce.flatten(1).square().sum(1).clamp_min(1e-24)
            beta = torch.where(inner > 0, torch.zeros_like(inner), inner / squared)
            total += self.alpha * (g_attn - beta.view(-1, 1, 1, 1) * g_ce)
        return self._counted(total)
