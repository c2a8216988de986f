"""The `strongest` preset: its members and their defaults, and the adaptive rule — a member runs
only on the images that still have a correctly predicted pixel. (The generic per-attack checks
of tests/test_attacks.py also run it: it lowers a trained model's accuracy inside the ball.)"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harden.attacks import ThreatModel, create_attack
from harden.attacks.apgd import APGD, REDUCED_RADIUS
from harden.attacks.base import Attack, pixel_accuracy_per_image
from harden.attacks.padam import PAdam
from harden.attacks.strongest import Strongest

Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _correctly_predicted(
    count: int, seed: int, low: float = 0.25, width: float = 0.5
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The linear model, `count` images in [low, low + width] and labels equal to its predictions."""
    model = _Linear().eval()
    torch.manual_seed(seed)
    images = torch.rand(count, 3, 8, 8) * width + low
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


def test_the_preset_holds_both_public_ensembles_losses_at_the_benchs_budget() -> None:
    attack = create_attack("strongest", ThreatModel(8 / 255))
    assert isinstance(attack, Strongest)
    apgd = [m for m in attack.members if isinstance(m, APGD)]
    padam = [m for m in attack.members if isinstance(m, PAdam)]
    # both SEA protocols' losses, red-ε (Croce et al.) and at the full ε (Halmosi et al.), and PAdam-Cos
    schedules = {(m.loss_name, "red" if m.radii == REDUCED_RADIUS else "full") for m in apgd}
    assert {"mask-ce-bal", "mask-ce", "jsd", "bal-ce", "mask-sph"} == {loss for loss, _ in schedules}
    assert {schedule for _, schedule in schedules} == {"red", "full"}
    # red-ε members only before the chain starts: a red-ε member would wander off the point it is given
    first_full = next(i for i, m in enumerate(attack.members) if not isinstance(m, APGD) or m.radii != REDUCED_RADIUS)
    assert all(not (isinstance(m, APGD) and m.radii == REDUCED_RADIUS) for m in attack.members[first_full:])
    assert len(padam) == 1 and padam[0].name.endswith("cosine")
    assert all(m.steps == 100 for m in attack.members)  # the budget the bench compares at
    assert len({m.seed for m in attack.members}) == len(attack.members)  # independent random starts
    shorter = create_attack("strongest", ThreatModel(8 / 255), steps=7, eot=2, seed=4)
    assert all(m.steps == 7 and m.eot == 2 for m in shorter.members)


def test_a_member_skips_images_already_without_a_correct_pixel() -> None:
    model, images, predicted = _correctly_predicted(3, seed=1)
    labels = predicted.clone()
    labels[0] = (predicted[0] + 1) % 4  # image 0: every pixel already wrong before any attack
    attack = create_attack("strongest", ThreatModel(8 / 255), steps=3, seed=0)
    outputs = attack.run_members(model, images, labels)
    assert list(outputs) == [m.name for m in attack.members]
    first = outputs[attack.members[0].name]
    # image 0 never reaches a member: its candidate is the clean image, and only images 1 and 2
    # were differentiated (3 steps each, plus APGD's first evaluation)
    for output in outputs.values():
        assert torch.equal(output.images[0], images[0])
        assert (output.images - images).abs().max() <= 8 / 255 + 1e-6
    assert not torch.equal(first.images[1:], images[1:])
    assert first.gradients.images % 2 == 0 and first.gradients.images > 0


def test_later_members_start_from_where_the_ensemble_stands() -> None:
    # once every image has lost all its correct pixels, the remaining members run on nothing and
    # offer the worst image found so far
    model, images, labels = _correctly_predicted(2, seed=2, low=0.0, width=1.0)
    attack = create_attack("strongest", ThreatModel(1.0), steps=20, seed=0)  # ε = 1: anything goes
    outputs = attack.run_members(model, images, labels)
    accuracies = [pixel_accuracy_per_image(model(o.images), labels) for o in outputs.values()]
    fooled_at = next(i for i, a in enumerate(accuracies) if bool((a == 0).all()))
    names = list(outputs)
    assert fooled_at < len(names) - 1, "the ε = 1 attack should have left members with nothing to do"
    for later in names[fooled_at + 1 :]:
        assert outputs[later].gradients.images == 0
        assert torch.equal(outputs[later].images, outputs[names[fooled_at]].images)
    worst = attack(model, images, labels).images
    assert bool((pixel_accuracy_per_image(model(worst), labels) == 0).all())


def test_chained_members_continue_from_the_ensembles_worst_image_and_fresh_ones_do_not() -> None:
    model, images, labels = _correctly_predicted(2, seed=3)
    attack = create_attack("strongest", ThreatModel(4 / 255), steps=2, seed=0)
    starts: dict[str, torch.Tensor | None] = {}
    for member in attack.members:
        member.perturb = _recording_start(member, member.perturb, starts)  # type: ignore[method-assign]
    outputs = attack.run_members(model, images, labels)
    names = list(outputs)
    assert starts[names[0]] is None  # the first starts at a random point of the ball
    assert starts[names[1]] is not None and torch.equal(starts[names[1]], outputs[names[0]].images)
    for member, chained in zip(attack.members[1:], attack.chained[1:], strict=True):
        assert (starts[member.name] is not None) == chained
    # the last two start fresh: candidates unlike the chain's for the mIoU assignment
    assert attack.chained[-2:] == [False, False] and all(attack.chained[1:-2])
    assert all(m.start_from is None for m in attack.members)  # nothing left behind for a later call


def _recording_start(member: Attack, perturb: Perturb, starts: dict[str, torch.Tensor | None]) -> Perturb:
    def recorded(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        starts[member.name] = None if member.start_from is None else member.start_from.clone()
        return perturb(model, x, y)

    return recorded


def test_a_start_point_replaces_the_random_start() -> None:
    model, images, labels = _correctly_predicted(2, seed=4)
    eps = 8 / 255
    start = images + eps * torch.sign(torch.randn_like(images))  # a corner of the ball
    # one PAdam step moves each value by at most its learning rate (2/255) from where it starts
    attack = create_attack("padam-ce", ThreatModel(eps), steps=1, seed=0)
    attack.start_from = start
    from_start = attack(model, images, labels).images
    assert (from_start - start).abs().max() <= 2 / 255 + 1e-6
    attack.start_from = None
    from_random = attack(model, images, labels).images
    assert (from_random - start).abs().max() > 2 / 255 + 1e-3
