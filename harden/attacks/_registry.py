"""The attack registries: plain dicts filled by `@register_attack` on factories.

A factory takes the threat model and the common options (steps, eot, allow_random, seed) and
returns an `Attack`. `kind` says what the attack may use: "white-box" (gradients) or
"black-box" (outputs only) — the sanity checks compare the two (docs/design.md §6) — or that it is a
"patch" attack (RAM paper Appendix A: only the pixels under a patch change, towards targets).
Patch attacks share names with ε-ball attacks (pgd, dag), so they are registered in
`PATCH_ATTACKS`, the others in `ATTACKS`; both by the same decorator, and both are `Attack`s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from harden.attack_catalogue import ATTACK_SUMMARIES, PATCH_SUMMARIES
from harden.attacks.apgd import APGD
from harden.attacks.base import Attack
from harden.attacks.dag import DAG
from harden.attacks.padam import PAdam
from harden.attacks.patch_attack import PatchAttack
from harden.attacks.patch_autoattack import PatchAutoAttack
from harden.attacks.patch_objectives import (
    SSAP,
    AttentionFool,
    IPatch,
    MaxAttnDAG,
    MaxVarDAG,
    PatchDAG,
    PatchEOT,
    PatchFool,
    PatchPGD,
)
from harden.attacks.pgd import PGD, kurakin_steps
from harden.attacks.rppgd import RPPGD
from harden.attacks.sea import SEA
from harden.attacks.square import RandomNoise, Square
from harden.attacks.strongest import Strongest
from harden.attacks.threat import ThreatModel
from harden.errors import InputError

Kind = Literal["white-box", "black-box", "patch"]
AttackFactory = Callable[..., Attack]


@dataclass(frozen=True)
class AttackEntry:
    name: str
    factory: AttackFactory
    summary: str
    kind: Kind


ATTACKS: dict[str, AttackEntry] = {}  # ε-ball attacks (white-box and black-box)
PATCH_ATTACKS: dict[str, AttackEntry] = {}  # patch attacks


def register_attack(name: str, kind: Kind = "white-box") -> Callable[[AttackFactory], AttackFactory]:
    """Register `factory` under `name`; its one-line summary is in harden/attack_catalogue.py."""
    registry, summaries = (PATCH_ATTACKS, PATCH_SUMMARIES) if kind == "patch" else (ATTACKS, ATTACK_SUMMARIES)

    def decorator(factory: AttackFactory) -> AttackFactory:
        if name in registry:
            raise ValueError(f"attack {name!r} is registered twice")
        if name not in summaries:
            raise ValueError(f"attack {name!r} has no summary in harden/attack_catalogue.py")
        registry[name] = AttackEntry(name, factory, summaries[name], kind)
        return factory

    return decorator


def create_attack(
    name: str,
    threat: ThreatModel,
    *,
    steps: int | None = None,
    eot: int = 1,
    allow_random: bool = False,
    seed: int = 0,
) -> Attack:
    """Build a registered attack; InputError (exit 2) naming the choices for an unknown name."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    return ATTACKS[name].factory(threat, steps=steps, eot=eot, allow_random=allow_random, seed=seed)


def create_patch_attack(
    name: str,
    *,
    steps: int | None = None,
    gamma: float | None = None,
    alpha: float = 1.0,
    eot: int = 1,
    seed: int = 0,
) -> PatchAttack:
    """Build a registered patch attack; InputError (exit 2) naming the choices for an unknown name."""
    if name not in PATCH_ATTACKS:
        raise InputError(f"unknown patch attack {name!r}; choose from {', '.join(PATCH_ATTACKS)}")
    attack = PATCH_ATTACKS[name].factory(steps=steps, gamma=gamma, alpha=alpha, eot=eot, seed=seed)
    assert isinstance(attack, PatchAttack)
    return attack


def _l2(threat: ThreatModel) -> ThreatModel:
    return ThreatModel(threat.eps, "l2", threat.low, threat.high)


@register_attack("fgsm")
def _fgsm(threat: ThreatModel, steps: int | None = None, **common: Any) -> Attack:
    return PGD(threat, steps=1, step_factor=1.0, random_start=False, name="fgsm", **common)


@register_attack("fgsm-ll")
def _fgsm_ll(threat: ThreatModel, steps: int | None = None, **common: Any) -> Attack:
    return PGD(threat, steps=1, step_factor=1.0, random_start=False, least_likely=True, name="fgsm-ll", **common)


@register_attack("bim")
def _bim(threat: ThreatModel, steps: int | None = None, **common: Any) -> Attack:
    steps = steps or kurakin_steps(threat.eps)
    return PGD(threat, steps=steps, step_factor=1.25, random_start=False, name="bim", **common)


@register_attack("bim-ll")
def _bim_ll(threat: ThreatModel, steps: int | None = None, **common: Any) -> Attack:
    steps = steps or kurakin_steps(threat.eps)
    return PGD(threat, steps=steps, step_factor=1.25, random_start=False, least_likely=True, name="bim-ll", **common)


@register_attack("bim-l2")
def _bim_l2(threat: ThreatModel, steps: int | None = None, **common: Any) -> Attack:
    return PGD(_l2(threat), steps=steps or 10, step_factor=1.25, random_start=False, name="bim-l2", **common)


@register_attack("pgd")
def _pgd(threat: ThreatModel, **common: Any) -> Attack:
    return PGD(threat, name="pgd", **common)


@register_attack("segpgd")
def _segpgd(threat: ThreatModel, **common: Any) -> Attack:
    return PGD(threat, loss="bal-ce", name="segpgd", **common)


@register_attack("cospgd")
def _cospgd(threat: ThreatModel, **common: Any) -> Attack:
    return PGD(threat, loss="cossim-ce", name="cospgd", **common)


def _register_apgd(loss: str, name: str) -> None:
    @register_attack(name)
    def _apgd(threat: ThreatModel, **common: Any) -> Attack:
        return APGD(threat, loss=loss, name=name, **common)


for _loss, _name in (
    ("ce", "apgd-ce"),
    ("bal-ce", "apgd-balce"),
    ("cossim-ce", "apgd-cossim"),
    ("mask-ce", "apgd-maskce"),
    ("jsd", "apgd-jsd"),
    ("mask-sph", "apgd-masksph"),
    ("mask-ce-bal", "apgd-maskce-bal"),
):
    _register_apgd(_loss, _name)


@register_attack("padam-ce")
def _padam_ce(threat: ThreatModel, **common: Any) -> Attack:
    return PAdam(threat, loss="ce", name="padam-ce", **common)


@register_attack("padam-cos")
def _padam_cos(threat: ThreatModel, **common: Any) -> Attack:
    return PAdam(threat, loss="cosine", name="padam-cos", **common)


@register_attack("sea")
def _sea(threat: ThreatModel, **common: Any) -> Attack:
    return SEA(threat, **common)


@register_attack("strongest")
def _strongest(threat: ThreatModel, **common: Any) -> Attack:
    return Strongest(threat, **common)


@register_attack("rppgd")
def _rppgd(threat: ThreatModel, **common: Any) -> Attack:
    return RPPGD(threat, **common)


@register_attack("dag")
def _dag(threat: ThreatModel, **common: Any) -> Attack:
    return DAG(threat, name="dag", **common)


@register_attack("dag-targeted")
def _dag_targeted(threat: ThreatModel, **common: Any) -> Attack:
    return DAG(threat, targeted=True, name="dag-targeted", **common)


@register_attack("square", kind="black-box")
def _square(threat: ThreatModel, **common: Any) -> Attack:
    return Square(threat, **common)


@register_attack("noise", kind="black-box")
def _noise(threat: ThreatModel, **common: Any) -> Attack:
    return RandomNoise(threat, **common)


for _patch_attack in (PatchPGD, PatchDAG, IPatch, SSAP, MaxVarDAG, MaxAttnDAG, AttentionFool, PatchFool, PatchEOT,
                      PatchAutoAttack):  # fmt: skip
    register_attack(_patch_attack.name, kind="patch")(_patch_attack)
