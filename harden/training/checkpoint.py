"""Training checkpoints, safe to load and safe to crash in: the resume state and starting from
trained weights (fine-tuning, PIR-AT). The run directory's format and loading a trained model
live in `harden.run`.

`state.safetensors` holds everything needed to resume, in ONE file so one atomic rename commits
it: model weights, optimizer tensors and the torch RNG state as tensors; epoch, step, optimizer
hyper-parameters and scalars as JSON metadata. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from harden._io import atomic_open, safetensors_bytes
from harden.config import ModelConfig
from harden.errors import InputError
from harden.models import SegmentationModel
from harden.models.compose import network_of
from harden.run import MODEL_FILE, STATE_FILE, load_weights_into, model_bytes, saved_epoch, weights_path


@dataclass
class Progress:
    epoch: int  # number of completed epochs
    step: int  # number of completed optimisation steps


def init_weights(model: SegmentationModel, path_or_run: str | Path) -> None:
    """Start from trained weights (fine-tuning) of the network: parameters RAM adds may be missing
    from them, and multiscale/CRF wrappers may differ (a CRF keeps its configured weights)."""
    path = weights_path(path_or_run, "give --init-from a run directory or a model.safetensors file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from err
    network = network_of(model)
    tensors = {_network_key(k): v for k, v in tensors.items() if not k.startswith("crf.")}
    ram_only = [k for k in network.state_dict() if k.endswith("logit_gain")]
    tensors = {k: v for k, v in tensors.items() if not k.endswith("logit_gain") or k in ram_only}
    load_weights_into(network, tensors, path, may_miss=set(ram_only))


def _network_key(key: str) -> str:
    """A composed model's weight name → the network's (`base.base.backbone.x` → `backbone.x`)."""
    while key.startswith("base."):
        key = key[len("base.") :]
    return key


def init_backbone(model: SegmentationModel, path: str | Path) -> int:
    """PIR-AT (Croce et al. §4.2): load a robust classifier's weights into the model's backbone.

    `path` is a safetensors file or a weights-only torch file (a state dict, or one under
    "state_dict"/"model"; nothing else is unpickled). A tensor is matched by its name in the
    model, or, when the backbone is one module (e.g. `backbone`), by that module's name plus the
    classifier's own name (`layer1.0.conv1.weight` → `backbone.layer1.0.conv1.weight`); a
    "module." prefix (DDP) is dropped. Tensors of the classifier's head match nothing and are
    skipped. Every backbone tensor must be found with its shape, else InputError names the
    first missing ones. Returns the number of tensors loaded.
    """
    path = Path(path)
    if not model.backbone_modules:
        raise InputError(f"{type(model).__name__} does not declare its backbone; --init-backbone needs one")
    tensors = _read_weights(path)
    own = {  # RAM's learnable temperature (logit_gain) is not a classifier's: it keeps its initial value
        name: value
        for name, value in model.state_dict().items()
        if name.split(".")[0] in model.backbone_modules and not name.endswith("logit_gain")
    }
    found: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix("module.")
        for name in (key, *(f"{prefix}.{key}" for prefix in model.backbone_modules)):
            if name in own:
                if own[name].shape != value.shape:
                    raise InputError(
                        f"{path}: {key} has shape {tuple(value.shape)} but the backbone's {name} is "
                        f"{tuple(own[name].shape)}; the checkpoint is for another architecture or width"
                    )
                found[name] = value
                break
    missing = sorted(set(own) - set(found))
    if missing:
        raise InputError(
            f"{path}: {len(missing)} of the {len(own)} backbone tensors of {type(model).__name__} are not in "
            f"the file (first: {missing[:3]}); it must hold the backbone's weights, named as in the model or "
            f"relative to its backbone module ({', '.join(model.backbone_modules)})"
        )
    model.load_state_dict(found, strict=False)
    return len(found)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"no weights file at {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and zip errors all mean "not a weights file"
        raise InputError(f"{path}: not a readable safetensors or weights-only torch file ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def save_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, extra: dict[str, Any]
) -> None:
    """Commit the resume state alone (a checkpoint inside an epoch, `--save-every`)."""
    with atomic_open(path, "wb") as f:
        f.write(state_bytes(model, optimizer, progress, extra))


def commit_epoch(
    run_dir: Path, model: nn.Module, config: ModelConfig, trained: nn.Module, optimizer: torch.optim.Optimizer,
    progress: Progress,
) -> None:  # fmt: skip
    """Publish the weights and the resume state of a finished epoch as one set.

    Both files are serialised and written to temporaries first, so a full disk or a crash while
    writing leaves the previous pair untouched. Then the state (the commit point) is renamed over
    its file, and the weights over theirs. Only a kill between those two renames can leave the
    state one epoch ahead of `model.safetensors`; the weights record their epoch, and a resume
    republishes them from the state (`republish_weights`).
    """
    weights = model_bytes(model, config, progress.epoch)
    state = state_bytes(trained, optimizer, progress, {})
    with atomic_open(run_dir / MODEL_FILE, "wb") as weights_file:  # renamed second
        weights_file.write(weights)
        with atomic_open(run_dir / STATE_FILE, "wb") as state_file:  # renamed first: the commit point
            state_file.write(state)


def republish_weights(run_dir: Path, model: nn.Module, config: ModelConfig, progress: Progress) -> bool:
    """After a resume: rewrite `model.safetensors` from the state's weights when it records another
    epoch than the state (a kill between `commit_epoch`'s two renames). True when it did."""
    recorded = saved_epoch(run_dir / MODEL_FILE)
    if recorded is None or recorded == progress.epoch:
        return False
    with atomic_open(run_dir / MODEL_FILE, "wb") as f:
        f.write(model_bytes(model, config, progress.epoch))
    return True


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, extra: dict[str, Any]) -> bytes:
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "progress": json.dumps({"epoch": progress.epoch, "step": progress.step}),
        "optimizer_groups": json.dumps(opt["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "extra": json.dumps(extra),
    }
    return safetensors_bytes(tensors, metadata)


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Progress, dict[str, Any]]:
    """Restore model, optimizer and torch RNG from `state.safetensors`; returns progress and extras."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        progress = Progress(**json.loads(metadata["progress"]))
        groups = json.loads(metadata["optimizer_groups"])
        scalars = json.loads(metadata["optimizer_scalars"])
        extra = json.loads(metadata["extra"])
        _check_progress(progress)
        if not isinstance(extra, dict) or not isinstance(scalars, dict):
            raise TypeError("extra and optimizer_scalars must be objects")
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise InputError(f"{path}: cannot resume from this checkpoint ({err}); start again with --overwrite") from err
    load_weights_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    # the optimizer and RNG state as saved; anything else (a tampered file) is refused, never half-applied
    try:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in scalars.items():
            state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as err:
        raise InputError(
            f"{path}: its optimizer or RNG state does not fit this run ({err}); start again with --overwrite"
        ) from err
    return progress, extra


def _check_progress(progress: Progress) -> None:
    for name in ("epoch", "step"):
        value = getattr(progress, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"progress.{name} must be a non-negative integer, got {value!r}")
