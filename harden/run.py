"""The run directory: the files a trained run consists of, and the model rebuilt from them.

A run directory holds:
- `config.json`: model and training configuration (human-readable);
- `model.safetensors`: the latest weights, with the model configuration in the file's metadata,
  so the file alone rebuilds the model (`load_model`);
- `state.safetensors`: everything needed to resume, in ONE file so one atomic rename commits it:
  model weights, optimizer tensors and the torch RNG state as tensors; epoch, step, optimizer
  hyper-parameters and scalars as JSON metadata. Nothing is ever unpickled;
- `metrics.jsonl` (one line per epoch), `curves.png`, and `eval.json` after `harden eval`.

Every file is written atomically (`harden._io`), so a run killed at any moment resumes from its
last complete checkpoint. Loading a trained model (export, verify, attack, eval) needs only this
module and the models, never the training loop (`harden.training.checkpoint` adds the resume
state and fine-tuning initialisation on top).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from harden._io import atomic_open, safetensors_bytes, write_json
from harden.config import ModelConfig, TrainConfig
from harden.errors import InputError
from harden.models import SegmentationModel, create_model
from harden.models.compose import compose
from harden.models.crf import CRFConfig
from harden.models.multiscale import Fusion
from harden.ram import RAMConfig, insert_ram_

if TYPE_CHECKING:
    from harden.data import SegmentationDataset

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
EPOCH_KEY = "harden_epoch"  # model.safetensors' metadata: epochs trained
RUN_MARKERS = {CONFIG_FILE, MODEL_FILE, STATE_FILE, METRICS_FILE}  # a directory holding one of these is a run


def write_config(run_dir: Path, model: ModelConfig, train: TrainConfig) -> None:
    write_json(run_dir / CONFIG_FILE, {"model": json.loads(model.to_json()), "train": train.to_dict()})


def read_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with `harden train --out DIR`"
        )
    try:
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a valid harden run configuration ({err})") from err


def build_model(config: ModelConfig) -> SegmentationModel:
    """A fresh model as `config` describes it: the registry network, RAM inserted when the config
    has RAM settings, run at several scales and followed by a CRF when it says so."""
    network = create_model(config.name, config.num_classes, **config.kwargs)
    if config.ram is not None:
        report = insert_ram_(network, RAMConfig.from_dict(config.ram))
        if not report.converted:
            raise InputError(
                f"model {config.name} has no attention layer RAM can convert; choose an attention model "
                "(`harden models` marks them) or drop the RAM options"
            )
    return compose(
        network,
        scales=tuple(config.scales) if config.scales is not None else None,
        fusion=cast(Fusion, config.fusion),
        crf=CRFConfig.from_dict(config.crf) if config.crf is not None else None,
    )


def save_model(path: Path, model: nn.Module, config: ModelConfig, epoch: int | None = None) -> None:
    with atomic_open(path, "wb") as f:
        f.write(model_bytes(model, config, epoch))


def model_bytes(model: nn.Module, config: ModelConfig, epoch: int | None = None) -> bytes:
    """`model.safetensors`'s content: the weights, the model configuration and (in a run) the
    number of epochs they were trained for, which ties them to the run's resume state."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"harden_model_config": config.to_json()}
    if epoch is not None:
        metadata[EPOCH_KEY] = str(epoch)
    return safetensors_bytes(tensors, metadata)


def saved_epoch(path: Path) -> int | None:
    """The epoch `model.safetensors` records (None for files written before it was recorded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get(EPOCH_KEY)
        return int(value) if value is not None else None
    except (SafetensorError, OSError, ValueError):
        return None


def load_model(path_or_run: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationModel, ModelConfig]:
    """Rebuild a model from `model.safetensors` (or a run directory holding one), in eval mode."""
    path = weights_path(path_or_run, "train a model first (`harden train --out RUN_DIR`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        config = ModelConfig.from_dict(json.loads(metadata["harden_model_config"]))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError) as err:
        raise InputError(f"{path}: not a readable harden weights file ({err}); retrain or restore it") from err
    model = build_model(config)
    load_weights_into(model, tensors, path)
    return model.to(device).eval(), config


def weights_path(path_or_run: str | Path, hint: str) -> Path:
    path = Path(path_or_run)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError(f"no weights at {path}; {hint}")
    return path


def load_weights_into(
    model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, may_miss: set[str] | None = None
) -> None:
    hint = "was the file written for another model or configuration?"
    expected = model.state_dict()
    for name, tensor in tensors.items():
        own = expected.get(name)
        if own is None:
            continue
        if own.is_floating_point() and not tensor.is_floating_point():
            raise InputError(f"{path}: tensor {name} is {tensor.dtype} where the model holds {own.dtype}; {hint}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{path}: tensor {name} holds NaN or infinite values; restore the file or retrain")
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InputError(f"{path}: weights do not fit the model; {hint}\n{err}") from err
    missing = [k for k in missing if k not in (may_miss or set())]
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not fit the model (missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}); {hint}"
        )


@dataclass
class OpenedRun:
    """A trained run ready to evaluate: its model (eval mode, on the device), configs and data."""

    run_dir: Path
    model: SegmentationModel
    model_config: ModelConfig
    train_config: TrainConfig
    dataset: SegmentationDataset
    data: str  # the dataset spec the images come from
    split: str


def open_run(
    run_dir: Path,
    device: str | torch.device = "cpu",
    *,
    data: str | None = None,
    split: str = "val",
    image_size: tuple[int, int] | None = None,
    images: int | None = None,
) -> OpenedRun:
    """The model of `run_dir` on `device` and a split of `data`.

    Defaults come from the run: the data it trained on, its image size (synthetic data) and its
    number of validation images; the synthetic scenes are drawn with its seed. InputError
    (exit 2) when the data's classes are not the model's.
    """
    from harden.data import open_dataset

    model_config, train_config = read_config(run_dir)
    model, _ = load_model(run_dir, device)
    data = data or train_config.data
    dataset = open_dataset(
        data,
        split,
        size=image_size or train_config.image_size,
        num_images=images or train_config.val_images,
        seed=train_config.seed,
    )
    if dataset.num_classes != model_config.num_classes:
        raise InputError(
            f"{data} has {dataset.num_classes} classes but the model of {run_dir} predicts "
            f"{model_config.num_classes}; use the dataset it was trained for (--data)"
        )
    return OpenedRun(Path(run_dir), model, model_config, train_config, dataset, data, split)
