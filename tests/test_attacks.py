"""Every registered attack: it breaks a trained model, stays in the threat model, leaves the model
as it found it, and is reproducible; plus the pieces (threat model, losses, APGD schedule, EOT)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from harden.attacks import ATTACKS, ThreatModel, create_attack, parse_eps
from harden.attacks.apgd import checkpoints
from harden.attacks.base import pixel_accuracy_per_image
from harden.attacks.losses import LOSSES, jensen_shannon
from harden.attacks.sea import SEA
from harden.data import collate_pad, open_dataset
from harden.errors import InputError
from harden.models import create_model
from harden.ram import RAMConfig, insert_ram_
from harden.run import load_model

EPS = 8 / 255
# few iterations keep the suite fast; enough for each attack to bite at ε = 8/255
STEPS = {"sea": 12, "square": 300, "noise": 1}
RADIUS = {"bim-l2": 1.0}  # an L2 radius: 1.0 over 3·32·64 values is ≈ 3/255 per value on average


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset("synthetic", "val", size=(32, 64), num_images=n, seed=0)
    return collate_pad([dataset[i] for i in range(n)])


@pytest.fixture(scope="module")
def model(trained_run: Path) -> nn.Module:
    return load_model(trained_run)[0]


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(pixel_accuracy_per_image(model(images), labels).mean())


@pytest.mark.parametrize("name", [n for n in ATTACKS if n != "noise"])
def test_attack_lowers_accuracy_inside_the_threat_model_and_leaves_the_model_alone(model: nn.Module, name: str) -> None:
    images, labels = batch()
    model.train()  # the attack must switch to eval and come back
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    eps = RADIUS.get(name, EPS)
    attack = create_attack(name, ThreatModel(eps), steps=STEPS.get(name, 5), seed=0)
    adversarial = attack(model, images, labels).images
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    clean, attacked = accuracy(model, images, labels), accuracy(model, adversarial, labels)
    assert attacked < clean - 0.02, f"{name}: {clean:.3f} → {attacked:.3f}"
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    if attack.threat.norm == "linf":
        assert (adversarial - images).abs().max() <= eps + 1e-6
    else:
        assert (adversarial - images).flatten(1).norm(dim=1).max() <= eps + 1e-5


@pytest.mark.parametrize("name", ["pgd", "apgd-jsd", "rppgd", "dag", "square"])
def test_same_seed_same_perturbation_other_seed_another(model: nn.Module, name: str) -> None:
    images, labels = batch(2)
    torch.manual_seed(123)
    first = create_attack(name, ThreatModel(EPS), steps=4, seed=5)(model, images, labels).images
    torch.manual_seed(456)  # the caller's RNG state must not matter
    second = create_attack(name, ThreatModel(EPS), steps=4, seed=5)(model, images, labels).images
    other = create_attack(name, ThreatModel(EPS), steps=4, seed=6)(model, images, labels).images
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_sea_worst_case_is_never_weaker_than_a_member(model: nn.Module) -> None:
    images, labels = batch()
    sea = SEA(ThreatModel(EPS), steps=10)
    worst = sea(model, images, labels).images
    members = sea.run_members(model, images, labels)
    with torch.no_grad():
        worst_acc = pixel_accuracy_per_image(model(worst), labels)
        for output in members.values():
            assert (worst_acc <= pixel_accuracy_per_image(model(output.images), labels) + 1e-9).all()


@pytest.mark.parametrize("name", ["apgd", "square"])
def test_targeted_apgd_and_square_move_pixels_to_the_target(model: nn.Module, name: str) -> None:
    from harden.attacks.apgd import APGD
    from harden.attacks.square import Square

    images, labels = batch(2)
    targets = torch.full_like(labels, 13)  # "car" everywhere

    def attack(targeted: bool) -> torch.Tensor:
        kind, steps = (APGD, 10) if name == "apgd" else (Square, 300)
        return kind(ThreatModel(EPS), steps=steps, targeted=targeted)(model, images, targets if targeted else labels)

    towards_car, untargeted = attack(True).images, attack(False).images
    assert (towards_car - images).abs().max() <= EPS + 1e-6
    # more pixels reach the target than clean, and than under the untargeted attack (which
    # makes pixels wrong, some of them "car" by chance)
    at_target = accuracy(model, towards_car, targets)
    assert at_target > accuracy(model, images, targets) + 0.01
    assert at_target > accuracy(model, untargeted, targets) + 0.005


def test_targeted_is_refused_where_it_has_no_meaning(model: nn.Module) -> None:
    from harden.attacks.apgd import APGD
    from harden.attacks.pgd import PGD

    with pytest.raises(InputError, match="no targeted form"):
        PGD(ThreatModel(EPS), targeted=True)
    with pytest.raises(InputError, match="targeted reading"):
        APGD(ThreatModel(EPS), loss="mask-ce", targeted=True)


def test_apgd_checkpoints_follow_the_paper() -> None:
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, §3.2)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_a_model_with_the_wrong_output_shape_is_refused(model: nn.Module) -> None:
    class HalfResolution(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x)[..., ::2, ::2]

    images, labels = batch(1)
    with pytest.raises(InputError, match="logits"):
        create_attack("pgd", ThreatModel(EPS), steps=1)(HalfResolution(), images, labels)


def test_bad_inputs_are_refused(model: nn.Module) -> None:
    images, labels = batch(1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        create_attack("pgd", ThreatModel(EPS))(model, images * 255, labels)
    with pytest.raises(InputError, match="labels"):
        create_attack("pgd", ThreatModel(EPS))(model, images, labels[:, :-1])
    with pytest.raises(InputError, match="iterations"):
        create_attack("pgd", ThreatModel(EPS), steps=0)
    with pytest.raises(InputError, match="unknown attack"):
        create_attack("pdg", ThreatModel(EPS))
    with pytest.raises(InputError, match="exceeds"):
        ThreatModel(2.0)


@pytest.mark.parametrize(("text", "value"), [("4/255", 4 / 255), ("0.0157", 0.0157), ("0", 0.0), (" 8/255 ", 8 / 255)])
def test_parse_eps(text: str, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "-1/255", "1/0", "nan", ""])
def test_parse_eps_refuses(text: str) -> None:
    with pytest.raises(InputError):
        parse_eps(text)


def test_l2_projection_keeps_the_radius_and_the_box() -> None:
    x = torch.rand(3, 3, 8, 8)
    far = x + torch.randn_like(x)
    projected = ThreatModel(0.5, "l2").project(far, x)
    assert (projected - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6
    assert projected.min() >= 0 and projected.max() <= 1


def test_losses_ignore_unlabelled_pixels_and_masks_drop_fooled_ones() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]).T.reshape(1, 2, 1, 3)  # predicts 0, 1, 0
    labels = torch.tensor([[[0, 0, 255]]])  # correct, wrong, ignored
    for name, loss in LOSSES.items():
        values = loss(logits, labels, 0.5)
        assert values.shape == (1, 1, 3)
        assert values[0, 0, 2] == 0, name
    assert LOSSES["mask-ce"](logits, labels, 0.0)[0, 0, 1] == 0
    assert LOSSES["mask-sph"](logits, labels, 0.0)[0, 0, 1] == 0
    assert LOSSES["ce"](logits, labels, 0.0)[0, 0, 1] > 0
    # balanced CE: the weight moves from correct to wrong pixels as the attack progresses
    early, late = LOSSES["bal-ce"](logits, labels, 0.0), LOSSES["bal-ce"](logits, labels, 0.99)
    assert early[0, 0, 1] == 0 and late[0, 0, 1] > 0 and late[0, 0, 0] < early[0, 0, 0]


def test_jensen_shannon_is_bounded_and_zero_at_the_label() -> None:
    logits = torch.randn(2, 5, 4, 4) * 10
    labels = torch.randint(0, 5, (2, 4, 4))
    values = jensen_shannon(logits, labels)
    assert (values >= -1e-6).all() and (values <= math.log(2) + 1e-6).all()
    confident = torch.full((1, 5, 1, 1), -30.0)
    confident[0, 2] = 30.0
    assert jensen_shannon(confident, torch.tensor([[[2]]])).abs().max() < 1e-6


def rad_model() -> nn.Module:
    model = create_model("segformer_tiny", num_classes=4)
    insert_ram_(model, RAMConfig(mas=False, rad=True, drop_p=0.5))
    return model.eval()


def test_a_randomised_model_is_refused_without_eot_and_says_how_to_fix_it() -> None:
    images, labels = torch.rand(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long)
    with pytest.raises(InputError, match="--eot"):
        create_attack("pgd", ThreatModel(EPS), steps=1)(rad_model(), images, labels)
    out = create_attack("pgd", ThreatModel(EPS), steps=1, allow_random=True)(rad_model(), images, labels)
    assert out.images.shape == images.shape


def test_eot_reduces_gradient_variance_on_a_rad_model() -> None:
    torch.manual_seed(0)
    model = rad_model()
    images, labels = torch.rand(1, 3, 32, 32), torch.randint(0, 4, (1, 32, 32))

    def gradients(eot: int) -> torch.Tensor:
        attack = create_attack("pgd", ThreatModel(EPS), eot=eot, allow_random=True)

        def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(x)
            return LOSSES["ce"](logits, labels, 0.0).flatten(1).mean(1), logits

        return torch.stack([attack.loss_and_grad(objective, images, labels)[2].flatten() for _ in range(6)])

    spread_1 = gradients(1).var(0).sum()
    spread_8 = gradients(8).var(0).sum()
    assert spread_8 < spread_1 / 3  # 1/8 in expectation


class _Blind(nn.Module):
    """Ignores its input: no attack can change what it predicts."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], self.bias.numel(), *images.shape[2:]) + self.bias.view(1, -1, 1, 1)
        return logits + 0 * images.mean()  # connected to the input, with zero gradient


def test_unbounded_check_passes_a_trained_model_and_fails_one_attacks_cannot_move(model: nn.Module) -> None:
    from harden.attacks.checks import UNBOUNDED_ACCURACY, unbounded_attack_succeeds

    images, labels = batch(2)
    check = unbounded_attack_succeeds(model, images, labels, eot=1, steps=10)
    assert check.status == "pass", check.detail
    assert float(check.detail.split("pAcc ")[1].split()[0]) <= UNBOUNDED_ACCURACY
    blind = _Blind(19)
    with torch.no_grad():
        blind.bias[int(labels[labels != 255].mode().values)] = 1.0  # predicts the commonest class everywhere
    assert unbounded_attack_succeeds(blind, images, labels, eot=1, steps=10).status == "fail"
