"""Clean training of a registry model: the loop behind `harden train`.

Reproducibility: weights are initialised from `seed`; the data order of epoch e comes from a
generator seeded with (seed, e) and augmentation from (seed, e, index) (`data.Augmented`); the
torch RNG (dropout) is saved in every checkpoint. So the same seed gives the same run on CPU,
and a run resumed from epoch e ends exactly where the uninterrupted run would.

Crash safety: after each epoch the metrics line is appended, then `model.safetensors`, then
`state.safetensors` — the commit point — are replaced atomically. On resume, metrics lines past
the committed epoch (a crash between the two writes) are dropped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from harden._io import atomic_open, remove_stale_temporaries
from harden.data import IGNORE_INDEX, Augmented, TrainAugment, open_dataset
from harden.errors import InputError
from harden.models import SegmentationModel
from harden.training.checkpoint import (
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    Progress,
    build_model,
    init_weights,
    load_state,
    read_config,
    save_model,
    save_state,
    write_config,
)
from harden.training.config import ModelConfig, TrainConfig
from harden.training.evaluate import evaluate
from harden.training.plots import plot_curves


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    val_miou: float
    val_pixel_accuracy: float
    seconds: float


def prepare_run(
    run_dir: Path,
    model_name: str,
    config: TrainConfig,
    model_kwargs: dict[str, Any],
    *,
    ram: dict[str, Any] | None = None,
    resume: bool,
    overwrite: bool,
    resume_epochs: int | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Decide what to train: a new run, or the saved configuration of the run being resumed.

    A resumed run keeps its saved configuration; only its number of epochs may change
    (`resume_epochs`; None keeps the saved number).
    """
    has_run = (run_dir / STATE_FILE).exists() or (run_dir / MODEL_FILE).exists()
    if resume:
        if not (run_dir / STATE_FILE).exists():
            raise InputError(f"--resume: {run_dir} has no {STATE_FILE} to resume from; drop --resume to start a run")
        model_config, saved = read_config(run_dir)
        if resume_epochs is not None:
            saved.epochs = resume_epochs
        return model_config, saved
    if has_run and not overwrite:
        raise InputError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    # Check the new run before touching the old one: bad input must lose nothing.
    probe = open_dataset(config.data, "train", size=config.image_size, num_images=1)
    model_config = ModelConfig(model_name, probe.num_classes, list(probe.class_names), dict(model_kwargs), ram)
    model = build_model(model_config)
    if config.init_from is not None:
        init_weights(model, config.init_from)
    if ram is not None:  # RAM settings that do not fit the model (e.g. a MAS threshold ≤ 1/keys) fail here
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *config.resolved_crop))
    if overwrite:
        for name in (STATE_FILE, MODEL_FILE, METRICS_FILE, CURVES_FILE, "eval.json"):
            (run_dir / name).unlink(missing_ok=True)
    return model_config, config


def train(
    run_dir: str | Path,
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model_config` with `config`, writing checkpoints and metrics into `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)  # debris of a writer killed mid-write; the real files are intact
    started = time.perf_counter()
    torch.manual_seed(config.seed)

    train_base = open_dataset(
        config.data, "train", size=config.image_size, num_images=config.train_images, seed=config.seed
    )
    val_set = open_dataset(config.data, "val", size=config.image_size, num_images=config.val_images, seed=config.seed)
    augment = TrainAugment(crop=config.resolved_crop, scale=config.scale_range)
    train_set = Augmented(train_base, augment, seed=config.seed)
    steps_per_epoch = len(train_set) // config.batch_size
    if steps_per_epoch == 0:
        raise InputError(
            f"the training split has {len(train_set)} images, fewer than one batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    total_steps = steps_per_epoch * config.epochs

    model = build_model(model_config)
    if config.init_from is not None and not resume:
        init_weights(model, config.init_from)
        log(f"starting from the weights in {config.init_from}")
    model = model.to(device)
    optimizer = _build_optimizer(model, config)
    done = Progress(epoch=0, step=0)
    if resume:
        done, _ = load_state(run_dir / STATE_FILE, model, optimizer)
        _truncate_metrics(run_dir / METRICS_FILE, done.epoch)
        log(f"resuming {run_dir} after epoch {done.epoch} (step {done.step})")
    write_config(run_dir, model_config, config)
    rows = _read_metrics(run_dir / METRICS_FILE)
    if done.epoch >= config.epochs:
        log(f"{run_dir} has already trained {done.epoch} of {config.epochs} epochs; nothing to do")

    for epoch in range(done.epoch, config.epochs):
        epoch_start = time.perf_counter()
        train_set.set_epoch(epoch)
        order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            generator=order,
            num_workers=config.workers,
        )
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress)
        for images, labels in bar:
            lr = config.resolved_lr * (1 - done.step / total_steps) ** config.poly_power
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(images.to(device)), labels.to(device), ignore_index=IGNORE_INDEX)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training loss became {loss.item()} at step {done.step}; lower --lr (now {config.resolved_lr:g})"
                    " or keep --grad-clip on, then --resume from the last good epoch"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            done.step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")

        confusion = evaluate(model, val_set, batch_size=config.batch_size, device=device, progress=progress)
        done.epoch = epoch + 1
        row = {
            "epoch": done.epoch,
            "step": done.step,
            "train_loss": float(np.mean(losses)),
            "val_miou": confusion.miou(),
            "val_pixel_accuracy": confusion.pixel_accuracy(),
            "lr": lr,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        rows.append(row)
        _append_metrics(run_dir / METRICS_FILE, row)
        save_model(run_dir / MODEL_FILE, model, model_config)
        save_state(run_dir / STATE_FILE, model, optimizer, done, extra={})
        plot_curves(rows, run_dir / CURVES_FILE, title=f"{model_config.name} on {config.data}")
        log(
            f"epoch {done.epoch}/{config.epochs}: loss {row['train_loss']:.4f}  val mIoU {row['val_miou']:.4f}  "
            f"pixel acc {row['val_pixel_accuracy']:.4f}  ({row['epoch_seconds']:.1f} s)"
        )

    last = rows[-1] if rows else {"val_miou": math.nan, "val_pixel_accuracy": math.nan}
    return TrainResult(run_dir, done.epoch, last["val_miou"], last["val_pixel_accuracy"], time.perf_counter() - started)


def _build_optimizer(model: SegmentationModel, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D parameters), the usual transformer recipe.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.resolved_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.resolved_lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=config.resolved_lr)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash; the epoch is re-run and re-logged
    return rows


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    rows = [r for r in _read_metrics(path) if r.get("epoch", 0) <= epochs_done]
    with atomic_open(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    # Appending keeps earlier lines intact whatever happens; a torn last line is dropped on read.
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
