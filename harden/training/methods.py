"""Training objectives: clean training and the adversarial-training methods of `harden train --adv`.

Each method turns a batch into the SUM of its pixel losses; the loop divides by the number of
labelled pixels of the whole (global) batch, so one process and N processes train the same
objective.

| method   | source                                 | batch                     | attack (`--adv-steps` k)         |
|----------|----------------------------------------|---------------------------|----------------------------------|
| (none)   |                                        | clean                     |                                  |
| `sat`    | DDC-AT §4, Alg. 1                      | share `--adv-ratio` adv.  | BIM: clean start, step α         |
| `pgd`    | Madry et al.; Croce et al. AT^k         | share `--adv-ratio` adv.  | PGD on CE, random start, step α  |
| `segpgd` | Gu et al. (SegPGD-AT)                   | share `--adv-ratio` adv.  | PGD on SegPGD's balanced CE      |
| `rppgd`  | rp-pgd.md, "Adversarial Training"       | share `--adv-ratio` adv.  | RP-PGD (region + prototype)      |
| `ddcat`  | DDC-AT §5, Alg. 2–3, eq. 3–5            | share `--adv-ratio` adv.  | BIM on the main branch           |
| `pir`    | Croce et al. §4.2 (PIR-AT)              | as `pgd`                  | as `pgd`; robust backbone first  |

The adversarial images of a batch are those at the END of the global batch (Alg. 1 line 4:
clean first, adversarial second), so which images are attacked does not depend on how the batch
is split across processes. Attacks run in eval mode on the bare model (no batch-norm statistics
are updated while crafting), seeded per step; a model with RAD is attacked without EOT, as the
RAM paper trains it (one random mask per forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.attacks.base import Attack
from harden.attacks.pgd import PGD
from harden.attacks.rppgd import RPPGD
from harden.attacks.threat import ThreatModel
from harden.config import TrainConfig
from harden.data.classes import IGNORE_INDEX
from harden.models import SegmentationModel


@dataclass
class StepLoss:
    """A step's summed pixel loss, and what the method wants logged as (numerator, denominator)
    pairs: the loop adds both over processes and steps and logs the ratio. A method gives the
    same keys at every step and in every process (zeros where it has nothing to count)."""

    total: torch.Tensor
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # 0-d tensors: no sync here


class Method:
    """Clean training: CE on every labelled pixel."""

    name = "clean"

    def trainable(self, model: SegmentationModel) -> nn.Module:
        """The module the optimiser trains; DDC-AT adds branches around the model."""
        return model

    def loss(
        self,
        trained: nn.Module,
        model: SegmentationModel,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        step: int,
        adversarial: torch.Tensor,
    ) -> StepLoss:
        """trained: the module to differentiate (possibly DDP-wrapped); model: the bare model, for
        attacks. adversarial: (B,) bool, which images of this process's batch to replace."""
        return StepLoss(_ce_sum(trained(images), labels))


class MixedAdversarial(Method):
    """SAT / PGD-AT / SegPGD-AT / RP-PGD-AT / PIR-AT: part of the batch replaced by attacked images."""

    def __init__(self, name: str, config: TrainConfig, seed: int) -> None:
        self.name = name
        self.seed = seed
        self.attack = training_attack(name, config)

    def loss(
        self,
        trained: nn.Module,
        model: SegmentationModel,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        step: int,
        adversarial: torch.Tensor,
    ) -> StepLoss:
        batch = images
        if adversarial.any():
            crafted = _craft(self.attack, model, images[adversarial], labels[adversarial], self.seed, step)
            batch = images.clone()
            batch[adversarial] = crafted
        logits = trained(batch)
        stats = {"adv_pixel_accuracy": _correct_pixels(logits[adversarial], labels[adversarial])}
        return StepLoss(_ce_sum(logits, labels), stats)


class DDCATNet(nn.Module):
    """The model (main branch f_n) with DDC-AT's auxiliary branch f_a and mask branch f_m.

    Both extra branches read the decoder's penultimate features (they share the backbone and
    decoder with f_n, DDC-AT §5.1) through a 3×3 conv–BN–ReLU and a 1×1 classifier: f_a into K
    classes, f_m into 2 (pixel goes to f_n / to f_a). Only `model` is saved as the trained model;
    the branches live in the resume state only, so exports and evaluations never see them.
    """

    def __init__(self, model: SegmentationModel, feature_channels: int) -> None:
        super().__init__()
        self.model = model
        self.auxiliary = _branch(feature_channels, model.num_classes)
        self.mask = _branch(feature_channels, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(o_n, o_a, o_m), all at input resolution."""
        main, features = self.model.forward_with_features(x)
        size = x.shape[-2:]
        auxiliary = F.interpolate(self.auxiliary(features), size=size, mode="bilinear", align_corners=False)
        mask = F.interpolate(self.mask(features), size=size, mode="bilinear", align_corners=False)
        return main, auxiliary, mask

    def combined_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The label map B of o = o_a ⊙ p + o_n ⊙ (1 − p), p the mask branch's label map (§5.2 a)."""
        main, auxiliary, mask = self(x)
        to_auxiliary = mask.argmax(1, keepdim=True).bool()
        return torch.where(to_auxiliary, auxiliary, main).argmax(1)


class DDCAT(Method):
    """DDC-AT (Alg. 3): L = λ₁ L_n + λ₂ L_a + λ₃ L_m (eq. 5, all λ = 1 as in the paper)."""

    name = "ddcat"

    def __init__(self, config: TrainConfig, seed: int) -> None:
        self.seed = seed
        self.attack = training_attack("ddcat", config)
        self.crop = config.resolved_crop

    def trainable(self, model: SegmentationModel) -> nn.Module:
        was_training = model.training
        device = next(model.parameters()).device
        with torch.no_grad():  # one forward pass tells the width of the decoder's features
            _, features = model.eval().forward_with_features(torch.zeros(1, 3, *self.crop, device=device))
        model.train(was_training)
        return DDCATNet(model, features.shape[1]).to(device)

    def loss(
        self,
        trained: nn.Module,
        model: SegmentationModel,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        step: int,
        adversarial: torch.Tensor,
    ) -> StepLoss:
        net = _unwrap(trained)
        assert isinstance(net, DDCATNet)
        # Alg. 2: adversarial examples from L(o_n, y) for the WHOLE batch (the clean half needs
        # them for its mask labels), then M_clean = 1[B_clean ≠ B_adv] and M_adv = 0.
        crafted = _craft(self.attack, model, images, labels, self.seed, step)
        net.eval()
        with torch.no_grad():
            boundary = net.combined_labels(images) != net.combined_labels(crafted)
        net.train()
        adv = adversarial.view(-1, 1, 1, 1)
        batch = torch.where(adv, crafted, images)
        mask_labels = (boundary & ~adv[:, 0]).long().where(labels != IGNORE_INDEX, labels)

        main, auxiliary, mask = trained(batch)
        to_auxiliary = mask.detach().argmax(1).float()  # p; q = 1 − p
        loss_main = (_ce(main, labels) * (1 - to_auxiliary)).sum()  # eq. 3, L_n
        loss_auxiliary = (_ce(auxiliary, labels) * to_auxiliary).sum()  # eq. 3, L_a
        loss_mask = _ce_sum(mask, mask_labels)  # eq. 4, L_m
        valid = labels != IGNORE_INDEX
        pixels = valid.sum()
        stats = {
            "mask_fraction": (to_auxiliary[valid].sum(), pixels),  # pixels f_m sends to f_a
            "boundary_fraction": (mask_labels[valid].sum(), pixels),  # pixels with M = 1
            "adv_pixel_accuracy": _correct_pixels(main[adversarial], labels[adversarial]),
        }
        return StepLoss(loss_main + loss_auxiliary + loss_mask, stats)


def create_method(config: TrainConfig) -> Method:
    """The objective `config.adv` names (clean training for None)."""
    if config.adv is None:
        return Method()
    if config.adv == "ddcat":
        return DDCAT(config, config.seed)
    return MixedAdversarial(config.adv, config, config.seed)


def training_attack(method: str, config: TrainConfig) -> Attack:
    """The attack a method crafts its training images with (L∞, ε = adv_eps, α = adv_step, k = adv_steps)."""
    threat = ThreatModel(config.adv_eps)
    common: dict[str, Any] = {"steps": config.adv_steps, "allow_random": True}
    if method in ("sat", "ddcat"):  # BIM (DDC-AT eq. 2): starts at the clean image
        return PGD(threat, loss="ce", step_size=config.adv_step, random_start=False, name="bim", **common)
    if method in ("pgd", "pir"):
        return PGD(threat, loss="ce", step_size=config.adv_step, **common)
    if method == "segpgd":
        return PGD(threat, loss="bal-ce", step_size=config.adv_step, name="segpgd", **common)
    if method == "rppgd":
        return RPPGD(threat, step_factor=config.adv_step * config.adv_steps / config.adv_eps, **common)
    raise ValueError(f"no training attack for {method!r}")


def adversarial_positions(batch_size: int, ratio: float, positions: range) -> torch.Tensor:
    """(len(positions),) bool: which of these places in the global batch hold adversarial images
    (the last round(ratio · batch_size) of it)."""
    first = batch_size - round(ratio * batch_size)
    return torch.tensor([p >= first for p in positions], dtype=torch.bool)


def _craft(
    attack: Attack, model: SegmentationModel, images: torch.Tensor, labels: torch.Tensor, seed: int, step: int
) -> torch.Tensor:
    attack.seed = seed * 1_000_003 + step  # a new random start per step, the same on a rerun
    return attack(model, images, labels).images


def _branch(channels: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, outputs, 1),
    )


def _unwrap(module: nn.Module) -> nn.Module:
    inner = getattr(module, "module", None)  # DistributedDataParallel
    return inner if isinstance(inner, nn.Module) else module


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _ce(logits, labels).sum()


def _correct_pixels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correctly classified, labelled) pixels: a pixel-accuracy numerator and denominator."""
    valid = labels != IGNORE_INDEX
    return (logits.detach().argmax(1) == labels)[valid].sum(), valid.sum()
