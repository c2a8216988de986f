"""Run configuration as dataclasses that round-trip through JSON.

`ModelConfig` is everything needed to rebuild a trained model (stored inside model.safetensors
and config.json); `TrainConfig` is everything needed to rerun or resume its training. Later
issues add fields (RAM settings, adversarial-training method) with defaults, so older run
directories still load.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from harden.data_spec import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from harden.errors import InputError

MAX_CLASSES = 100_000  # a bound that keeps a tampered config from allocating the machine away

# The adversarial-training methods `harden train --adv` knows (`harden.training.methods`).
ADV_METHODS = ("sat", "pgd", "segpgd", "rppgd", "ddcat", "pir")
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class ModelConfig:
    """Args:
    name: registry name, e.g. "segformer_tiny".
    num_classes: K.
    class_names: names of the K classes (reports and plots).
    kwargs: keyword overrides passed to the registry factory.
    ram: the `RAMConfig` (as a dict) inserted into the model's attention layers; None = no RAM.
    scales: run the network at these input scales and fuse the logits (`MultiScale`); None = once.
    fusion: how the scales are fused, "max" or "mean".
    crf: the `CRFConfig` (as a dict) of a mean-field CRF appended to the model; None = no CRF.
    """

    name: str
    num_classes: int
    class_names: list[str]
    kwargs: dict[str, Any] = field(default_factory=dict)
    ram: dict[str, Any] | None = None
    scales: list[float] | None = None
    fusion: str = "max"
    crf: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # read back from files a user may have edited: every field is checked before any allocation
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"model config: name must be a model name, got {self.name!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise InputError(f"model config: num_classes must be an integer, got {self.num_classes!r}")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise InputError(f"model config: num_classes must be between 2 and {MAX_CLASSES}, got {self.num_classes}")
        names = self.class_names
        if not isinstance(names, list | tuple) or len(names) != self.num_classes:
            raise InputError(f"model config: class_names must list {self.num_classes} names")
        for key in ("kwargs", "ram", "crf"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, dict):
                raise InputError(f"model config: {key} must be an object, got {type(value).__name__}")
        if self.scales is not None and (
            not isinstance(self.scales, list | tuple)
            or not all(isinstance(s, int | float) and s > 0 for s in self.scales)
        ):
            raise InputError(f"model config: scales must be positive numbers, got {self.scales!r}")
        if self.fusion not in ("max", "mean"):
            raise InputError(f"model config: fusion must be 'max' or 'mean', got {self.fusion!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """Args:
    data: dataset spec ("synthetic", "cityscapes:PATH", ...).
    epochs: number of passes over the training split.
    batch_size: images per optimisation step.
    optimizer: "adamw" or "sgd".
    lr: peak learning rate; None means 1e-3 for AdamW, 1e-2 for SGD.
    weight_decay: None means 1e-2 for AdamW, 5e-4 for SGD.
    poly_power: the learning rate decays as (1 − step/total)^poly_power.
    grad_clip: max gradient norm; 0 disables clipping.
    image_size: synthetic image (height, width).
    crop: training crop (height, width); None means the synthetic image size, or 512×512.
    scale_range: random rescaling range before cropping.
    train_images, val_images: limit the splits (synthetic: number of scenes); None = all/default.
    seed: seeds weights, data order and augmentation; same seed → same run on CPU.
    workers: data-loader worker processes.
    init_from: weights to start from (a run directory or model.safetensors): fine-tuning.
    adv: adversarial-training method (`harden.training.methods.METHODS`); None = clean training.
    adv_eps: L∞ radius of the training attack, on [0, 1] pixels (DDC-AT §6.2: 0.03).
    adv_step: the training attack's step size α (DDC-AT §6.2: 0.01).
    adv_steps: the training attack's iterations k (DDC-AT §6.2: 3; Croce et al.'s AT² / AT⁵: 2 / 5).
    adv_ratio: share of each batch replaced by its adversarial version (SAT and DDC-AT: half).
    init_backbone: robust classifier weights loaded into the backbone before training (PIR-AT).
    amp: mixed precision on CUDA: "off", "bf16" or "fp16".
    save_every: also checkpoint every this many optimisation steps inside an epoch (0: at epoch ends only).
    """

    data: str = "synthetic"
    epochs: int = 30
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    poly_power: float = 0.9
    grad_clip: float = 1.0
    image_size: tuple[int, int] = (128, 256)
    crop: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.75, 1.5)
    train_images: int | None = None
    val_images: int | None = None
    seed: int = 0
    workers: int = 0
    init_from: str | None = None
    adv: str | None = None
    adv_eps: float = 0.03
    adv_step: float = 0.01
    adv_steps: int = 3
    adv_ratio: float = 0.5
    init_backbone: str | None = None
    amp: str = "off"
    save_every: int = 0

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if min(self.image_size) < MIN_IMAGE_SIDE or self.image_size[0] * self.image_size[1] > MAX_IMAGE_PIXELS:
            raise InputError(
                f"image size {self.image_size}: each side ≥ {MIN_IMAGE_SIDE} and at most "
                f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP"
            )
        if self.crop is not None:
            self.crop = (int(self.crop[0]), int(self.crop[1]))
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        self.validate()

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.optimizer == "adamw" else 1e-2)

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-2 if self.optimizer == "adamw" else 5e-4

    @property
    def resolved_crop(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop
        return self.image_size if self.data == "synthetic" else (512, 512)

    def validate(self) -> None:
        checks = [
            (isinstance(self.data, str), f"data must be a dataset spec string, got {self.data!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}"),
            (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"learning rate must be > 0, got {self.lr}"),
            (
                self.weight_decay is None or (math.isfinite(self.weight_decay) and self.weight_decay >= 0),
                f"weight decay must be ≥ 0, got {self.weight_decay}",
            ),
            (self.poly_power >= 0, f"poly power must be ≥ 0, got {self.poly_power}"),
            (self.grad_clip >= 0, f"gradient clip must be ≥ 0 (0 disables), got {self.grad_clip}"),
            (
                0 < self.scale_range[0] <= self.scale_range[1],
                f"scale range must satisfy 0 < low ≤ high, got {self.scale_range}",
            ),
            (min(self.resolved_crop) >= 16, f"crop must be at least 16×16, got {self.resolved_crop}"),
            (self.workers >= 0, f"workers must be ≥ 0, got {self.workers}"),
            (
                self.adv is None or self.adv in ADV_METHODS,
                f"unknown adversarial-training method {self.adv!r}; choose one of {', '.join(ADV_METHODS)}",
            ),
            (0 < self.adv_eps <= 1, f"--adv-eps must be in (0, 1] (pixels on [0, 1]), got {self.adv_eps}"),
            (0 < self.adv_step <= 1, f"--adv-step must be in (0, 1], got {self.adv_step}"),
            (self.adv_steps >= 1, f"--adv-steps must be at least 1, got {self.adv_steps}"),
            (0 < self.adv_ratio <= 1, f"--adv-ratio must be in (0, 1], got {self.adv_ratio}"),
            (
                self.adv != "pir" or self.init_backbone is not None,
                "--adv pir starts from a robust classifier: give its weights with --init-backbone PATH",
            ),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, not {self.amp!r}"),
            (self.save_every >= 0, f"--save-every must be ≥ 0 (0: at epoch ends only), got {self.save_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


def check_amp(amp: str, device: str) -> None:
    """Mixed precision needs a GPU (TrainConfig does not know the device, hence a function)."""
    if amp != "off" and not device.startswith("cuda"):
        raise InputError(f"--amp {amp} is mixed precision on a GPU; use --device cuda, or --amp off on {device}")


def check_world_size(batch_size: int, processes: int) -> None:
    """--batch-size is the global batch: every process takes an equal share of it."""
    if batch_size % processes:
        raise InputError(
            f"--batch-size {batch_size} is the global batch; it must divide evenly among {processes} processes"
        )


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InputError(
            f"unknown {cls.__name__} fields {sorted(unknown)}: the run was written by a newer harden; upgrade harden"
        )
    for key, value in data.items():  # JSON has no tuples
        if isinstance(value, list) and key not in ("class_names",):
            data = {**data, key: tuple(value)}
    try:
        return cls(**data)
    except (TypeError, ValueError, IndexError) as err:  # a missing field, or a value of the wrong kind
        if isinstance(err, InputError):
            raise
        raise InputError(f"{cls.__name__}: {err}") from err
