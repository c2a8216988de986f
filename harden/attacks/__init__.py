"""Adversarial attacks on segmentation models and their evaluation (docs/design.md §2, §6).

- `threat`: the threat model (norm, ε, box) and `parse_eps`.
- `losses`: pixel-wise attack objectives (CE, Bal-CE, CosSim-CE, Mask-CE, JS, Mask-Sph).
- `base`: the `Attack` template (eval mode, projection, EOT, seeded RNG, gradient bookkeeping).
- one file per algorithm: `pgd` (FGSM … CosPGD), `apgd`, `sea`, `rppgd`, `dag`, `square`.
- patch attacks (RAM paper App. A): the threat `patch`, the template `patch_attack`, the
  objectives `patch_losses` and `patch_objectives`, `attention_reader`, `patch_autoattack`;
  evaluated by `patch_evaluate`.
- `evaluate`: clean vs adversarial metrics, worst cases, transfer; `checks`: sanity checks.
- `create_attack(name, threat, ...)` builds any attack of the registry `ATTACKS`;
  `create_patch_attack(name, ...)` any of `PATCH_ATTACKS`.
"""

from harden.attacks._registry import ATTACKS, PATCH_ATTACKS, create_attack, create_patch_attack, register_attack
from harden.attacks.base import Attack, AttackOutput, GradientStats, is_randomised
from harden.attacks.threat import ThreatModel, format_eps, parse_eps

__all__ = [
    "ATTACKS",
    "PATCH_ATTACKS",
    "Attack",
    "AttackOutput",
    "GradientStats",
    "ThreatModel",
    "create_attack",
    "create_patch_attack",
    "format_eps",
    "is_randomised",
    "parse_eps",
    "register_attack",
]
