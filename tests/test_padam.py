"""PAdam-CE / PAdam-Cos (Halmosi et al., ECCV 2024) and the class-balanced masked CE member:
their losses as the papers define them, Adam's step as the reference takes it, and the ε-ball.
(Every registered attack also runs through tests/test_attacks.py's generic checks.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harden.attacks import ThreatModel, create_attack
from harden.attacks.losses import balanced_masked_cross_entropy, cosine_distance, cross_entropy
from harden.attacks.padam import PAdam
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError


def test_cosine_distance_is_one_minus_the_cosine_to_the_one_hot_label() -> None:
    logits = torch.randn(2, 5, 4, 6)
    labels = torch.randint(0, 5, (2, 4, 6))
    labels[0, 0, :3] = IGNORE_INDEX
    loss = cosine_distance(logits, labels)
    safe = labels.clamp_max(4)
    expected = 1 - F.cosine_similarity(logits, F.one_hot(safe, 5).movedim(-1, 1).float(), dim=1)
    valid = labels != IGNORE_INDEX
    assert torch.allclose(loss[valid], expected[valid], atol=1e-6)
    assert (loss[~valid] == 0).all()


def test_balanced_masked_ce_weighs_every_class_of_the_image_equally() -> None:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :1, :2] = 3  # a small object: 2 pixels of class 3 beside 62 of class 0
    logits = torch.zeros(1, 4, 8, 8)
    logits[:, 0] = 2.0  # class 0 predicted everywhere: the object is already wrong, the road correct
    logits[0, 3, :1, :1] = 5.0  # one object pixel still correct
    loss = balanced_masked_cross_entropy(logits, labels)
    ce = cross_entropy(logits, labels)
    weight = loss / ce
    road, small = labels == 0, labels == 3
    # 64 labelled pixels, 2 classes: class 0's pixels weigh 64/(2·62), class 3's 64/(2·2)
    assert torch.allclose(weight[road], torch.full_like(weight[road], 64 / 124))
    assert float(weight[0, 0, 0]) == pytest.approx(16.0)
    assert float(loss[0, 0, 1]) == 0  # a fooled pixel is masked out
    everywhere_right = F.one_hot(labels, 4).movedim(-1, 1).float() * 5  # every pixel still correct
    weights = balanced_masked_cross_entropy(everywhere_right, labels) / cross_entropy(everywhere_right, labels)
    assert float(weights[road].sum()) == pytest.approx(32.0) and float(weights[small].sum()) == pytest.approx(32.0)


class _Linear(nn.Module):
    """A per-pixel linear classifier: gradients known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_padam_takes_adams_first_step_and_stays_in_the_ball() -> None:
    torch.manual_seed(0)
    model = _Linear().eval()
    images = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    labels = torch.randint(0, 4, (2, 8, 8))
    eps = 8 / 255
    attack = PAdam(ThreatModel(eps), steps=1, seed=3)
    # the reference's first step: from the random start, Adam (AMSGrad, maximise) moves each value by
    # lr · g / (|g| + 1e-8) ≈ lr · sign(g), then clips to the ball and the box
    torch.manual_seed(3)
    start = attack.threat.random_start(images)
    x = start.clone().requires_grad_(True)
    logits = model(x)
    loss = (F.cross_entropy(logits, labels, reduction="none").flatten(1).mean(1)).sum()
    (grad,) = torch.autograd.grad(loss, x)
    stepped = attack.threat.project(start + (2 / 255) * grad / (grad.abs() + 1e-8), images)
    result = attack(model, images, labels).images
    ours = pixel_wrong(model, result, labels)
    assert torch.allclose(result, stepped, atol=1e-6) or torch.allclose(result, start, atol=1e-6)
    assert ours >= pixel_wrong(model, start, labels)  # the point kept is the one with most pixels won
    assert (result - images).abs().max() <= eps + 1e-6


def pixel_wrong(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(1) != labels).sum())


@pytest.mark.parametrize("name", ["padam-ce", "padam-cos", "apgd-maskce-bal"])
def test_the_ensemble_members_are_registered_with_their_papers_defaults(name: str) -> None:
    attack = create_attack(name, ThreatModel(4 / 255))
    assert attack.name == name
    assert attack.steps == (200 if name.startswith("padam") else 100)
    if name.startswith("padam"):
        assert isinstance(attack, PAdam) and attack.lr == pytest.approx(2 / 255)


def test_padam_refuses_a_learning_rate_outside_the_box() -> None:
    with pytest.raises(InputError, match="learning rate"):
        PAdam(ThreatModel(4 / 255), lr=0.0)
