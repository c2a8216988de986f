"""The training loop behind `harden train`: clean or adversarial (`methods.py`), one process or many.

Reproducibility: weights are initialised from `seed`; the global batches of epoch e come from a
permutation seeded with (seed, e) and augmentation from (seed, e, index) (`data.Augmented`);
the training attacks are seeded by (seed, step); the torch RNG (dropout) is saved in every
checkpoint. So the same seed gives the same run on CPU, and a resumed run ends where the
uninterrupted run would.

Distributed (torchrun): `--batch-size` is the GLOBAL batch; process r takes its block of every
global batch, the loss is normalised by the global batch's labelled pixels and DDP averages the
gradients: the same step as one process up to the order of float reductions. Batch norm is
synchronised on GPUs; on CPU torch has no synchronised batch norm, so there each process
normalises by its own share of the batch (models without batch norm, e.g. segmenter_tiny, are
unaffected). Validation is split the same way and its confusion matrices added on rank 0,
which alone writes the run directory. A run may resume with another number of processes.

Crash safety: after each epoch the metrics line is appended, then `model.safetensors` and
`state.safetensors` are committed as a pair (`checkpoint.commit_epoch`: both written in full to
temporaries, then the state — the commit point — and the weights renamed); `--save-every N` also
commits the state every N steps inside an epoch. On resume, metrics lines past the committed
epoch are dropped, and weights left one epoch behind the state are republished from it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from harden._io import atomic_open, remove_stale_temporaries
from harden.config import ModelConfig, TrainConfig, check_amp, check_world_size
from harden.data import IGNORE_INDEX, Augmented, SegmentationDataset, TrainAugment, open_dataset
from harden.distributed import Distributed
from harden.errors import InputError
from harden.evaluation import evaluate
from harden.metrics import ConfusionMatrix
from harden.models.external import HF_PREFIX, hf_settings, load_hf_weights
from harden.outputs import check_run_directory
from harden.run import (
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RUN_MARKERS,
    STATE_FILE,
    build_model,
    read_config,
    write_config,
)
from harden.training.checkpoint import (
    Progress,
    commit_epoch,
    init_backbone,
    init_weights,
    load_state,
    republish_weights,
    save_state,
)
from harden.training.methods import adversarial_positions, create_method
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

    def to_dict(self) -> dict[str, Any]:
        """The one-line JSON summary `harden train` prints at the end."""
        return {"run_dir": str(self.run_dir), "epochs": self.epochs_done, "val_miou": round(self.val_miou, 4),
                "val_pixel_accuracy": round(self.val_pixel_accuracy, 4), "seconds": round(self.seconds, 1)}  # fmt: skip


def describe_training(model_config: ModelConfig, config: TrainConfig, device: str, run_dir: Path) -> str:
    """One line: what is trained (model, RAM, scales, CRF, adversarial training), on what, where."""
    from harden.attacks.threat import format_eps
    from harden.ram import RAMConfig

    notes = ""
    if model_config.ram is not None:
        notes += f" with RAM {RAMConfig.from_dict(model_config.ram).describe()}"
    if model_config.scales is not None:
        notes += f" at scales {','.join(f'{s:g}' for s in model_config.scales)} ({model_config.fusion})"
    if model_config.crf is not None:
        notes += " with a mean-field CRF"
    if config.adv is not None:
        attack = f"L∞ ε={format_eps(config.adv_eps)}, α={format_eps(config.adv_step)}, {config.adv_steps} steps"
        notes += f", adversarial training {config.adv} ({attack}, {config.adv_ratio:.0%} of each batch)"
    return f"training {model_config.name}{notes} on {config.data} for {config.epochs} epochs on {device} → {run_dir}"


def prepare_run(
    run_dir: Path,
    model_name: str,
    config: TrainConfig,
    model_kwargs: dict[str, Any],
    *,
    ram: dict[str, Any] | None = None,
    scales: tuple[float, ...] | None = None,
    fusion: str = "max",
    crf: dict[str, Any] | None = None,
    resume: bool,
    overwrite: bool,
    resume_epochs: int | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Decide what to train: a new run, or the saved configuration of the run being resumed.

    A resumed run keeps its saved configuration; only its number of epochs may change
    (`resume_epochs`; None keeps the saved number).
    """
    check_run_directory(run_dir, RUN_MARKERS)
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
    hf_folder = model_name[len(HF_PREFIX) :] if model_name.startswith(HF_PREFIX) else None
    if hf_folder is not None:  # the folder's configuration, stored in the run: the run rebuilds without it
        model_kwargs = {**model_kwargs, **hf_settings(hf_folder, probe.num_classes, list(probe.class_names))}
    model_config = ModelConfig(
        model_name,
        probe.num_classes,
        list(probe.class_names),
        dict(model_kwargs),
        ram,
        scales=list(scales) if scales is not None else None,
        fusion=fusion,
        crf=crf,
    )
    model = build_model(model_config)
    if hf_folder is not None and config.init_from is None:
        load_hf_weights(model, hf_folder)  # fine-tune the user's pretrained weights
    if config.init_from is not None:
        init_weights(model, config.init_from)
    if config.init_backbone is not None:
        init_backbone(model, config.init_backbone)
    if ram is not None or scales is not None:  # a MAS threshold ≤ 1/keys, or a scale too small, fails here
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
    """Train `model_config` with `config`, writing checkpoints and metrics into `run_dir`.

    Started by torchrun, every process trains its share of each global batch with
    DistributedDataParallel and rank 0 alone logs and writes the run directory.
    """
    check_amp(config.amp, device)
    with Distributed.from_environment("nccl" if device.startswith("cuda") else "gloo") as distributed:
        if distributed.active and device.startswith("cuda"):
            device = f"cuda:{distributed.local_rank}"
            torch.cuda.set_device(device)
        return _train(
            Path(run_dir),
            model_config,
            config,
            resume=resume,
            device=device,
            progress=progress and distributed.is_main,
            log=log if distributed.is_main else _silent,
            distributed=distributed,
        )


def _train(
    run_dir: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    resume: bool,
    device: str,
    progress: bool,
    log: Callable[[str], None],
    distributed: Distributed,
) -> TrainResult:
    main = distributed.is_main
    check_world_size(config.batch_size, distributed.world_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
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
    if not resume:
        if config.init_from is not None:
            init_weights(model, config.init_from)
            log(f"starting from the weights in {config.init_from}")
        if config.init_backbone is not None:
            loaded = init_backbone(model, config.init_backbone)
            log(f"backbone initialised from {config.init_backbone} ({loaded} tensors)")
    model = model.to(device)
    method = create_method(config)
    trained = method.trainable(model)  # the model, or the model inside DDC-AT's branches
    optimizer = _build_optimizer(trained, config)
    done = Progress(epoch=0, step=0)
    running = _Running()
    if resume:
        done, extra = load_state(run_dir / STATE_FILE, trained, optimizer)
        if done.step > done.epoch * steps_per_epoch:  # a checkpoint from inside an epoch (--save-every)
            running = _Running(**extra.get("running", {}))
        if main:
            _truncate_metrics(run_dir / METRICS_FILE, done.epoch)
            if republish_weights(run_dir, model, model_config, done):
                log(f"{MODEL_FILE} was one epoch behind the resume state (interrupted while saving): rewritten")
        log(f"resuming {run_dir} after epoch {done.epoch} (step {done.step})")
    forward: nn.Module = trained
    if distributed.active:
        if device.startswith("cuda"):  # batch statistics over the global batch, as one process computes them
            trained = nn.SyncBatchNorm.convert_sync_batchnorm(trained)
        forward = DistributedDataParallel(trained, device_ids=[device] if device.startswith("cuda") else None)
    if main:
        write_config(run_dir, model_config, config)
    rows = _read_metrics(run_dir / METRICS_FILE)
    if done.epoch >= config.epochs:
        log(f"{run_dir} has already trained {done.epoch} of {config.epochs} epochs; nothing to do")

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
    shard = distributed.shard(config.batch_size)  # this process's places in every global batch
    adversarial = adversarial_positions(config.batch_size, config.adv_ratio, shard).to(device)
    lr = config.resolved_lr
    for epoch in range(done.epoch, config.epochs):
        epoch_start = time.perf_counter()
        train_set.set_epoch(epoch)
        skip = done.step - epoch * steps_per_epoch  # batches this epoch already trained (mid-epoch resume)
        batches = [[batch[i] for i in shard] for batch in epoch_batches(len(train_set), config, epoch)[skip:]]
        # Its own generator, so creating the loader draws nothing from the global RNG (dropout's),
        # which a mid-epoch checkpoint restores: a resumed run then continues the same stream.
        workers_seed = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loader = DataLoader(train_set, batch_sampler=batches, num_workers=config.workers, generator=workers_seed)
        trained.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress)
        for images, labels in bar:
            lr = config.resolved_lr * (1 - done.step / total_steps) ** config.poly_power
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device), labels.to(device)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
                step_loss = method.loss(forward, model, images, labels, step=done.step, adversarial=adversarial)
            # Divide by the labelled pixels of the GLOBAL batch; DDP averages gradients over the
            # processes, hence the factor world_size. One process: the mean pixel CE.
            # The loss, pixel count and statistics travel as one tensor: one all-reduce and one
            # device-to-host copy per step.
            names = sorted(step_loss.stats)
            counted = [t.detach().float() for name in names for t in step_loss.stats[name]]
            pixels_here = (labels != IGNORE_INDEX).sum().float()
            sums = distributed.all_reduce_sum(torch.stack([step_loss.total.detach().float(), pixels_here, *counted]))
            loss = step_loss.total * distributed.world_size / sums[1].clamp_min(1)
            total, pixels, *values = sums.tolist()
            global_loss = total / max(pixels, 1.0)
            stats = {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(names)}
            if not math.isfinite(global_loss):
                raise TrainingDivergedError(
                    f"training loss became {global_loss} at step {done.step}; lower --lr (now {config.resolved_lr:g})"
                    " or keep --grad-clip on, then --resume from the last good checkpoint"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trained.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            done.step += 1
            running.add(global_loss, stats)
            bar.set_postfix(loss=f"{global_loss:.3f}", lr=f"{lr:.2e}")
            inside_epoch = done.step < (epoch + 1) * steps_per_epoch
            if main and config.save_every and done.step % config.save_every == 0 and inside_epoch:
                save_state(run_dir / STATE_FILE, trained, optimizer, done, extra={"running": running.to_dict()})

        training_seconds = time.perf_counter() - epoch_start
        confusion = _evaluate(model, val_set, config, device, progress, distributed)
        done.epoch = epoch + 1
        if main:
            assert confusion is not None
            row = {
                "epoch": done.epoch,
                "step": done.step,
                "train_loss": running.mean_loss(),
                "val_miou": confusion.miou(),
                "val_pixel_accuracy": confusion.pixel_accuracy(),
                "lr": lr,
                "epoch_seconds": time.perf_counter() - epoch_start,
                "train_seconds": training_seconds,  # the optimisation steps alone, without validation
                **running.mean_stats(),
            }
            rows.append(row)
            _append_metrics(run_dir / METRICS_FILE, row)
            commit_epoch(run_dir, model, model_config, trained, optimizer, done)
            plot_curves(rows, run_dir / CURVES_FILE, title=f"{model_config.name} on {config.data}")
            extras = "".join(f"  {k} {v:.4f}" for k, v in running.mean_stats().items())
            log(
                f"epoch {done.epoch}/{config.epochs}: loss {row['train_loss']:.4f}  val mIoU {row['val_miou']:.4f}  "
                f"pixel acc {row['val_pixel_accuracy']:.4f}{extras}  ({row['epoch_seconds']:.1f} s)"
            )
        running = _Running()

    last = rows[-1] if rows else {"val_miou": math.nan, "val_pixel_accuracy": math.nan}
    return TrainResult(run_dir, done.epoch, last["val_miou"], last["val_pixel_accuracy"], time.perf_counter() - started)


def epoch_batches(count: int, config: TrainConfig, epoch: int) -> list[list[int]]:
    """The global batches of an epoch: a permutation seeded by (seed, epoch), cut into full batches.

    Every process computes the same list and takes its own places in each batch, so the global
    batches, and the data order, do not depend on the number of processes.
    """
    order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    permutation = torch.randperm(count, generator=order).tolist()
    size = config.batch_size
    return [permutation[i * size : (i + 1) * size] for i in range(count // size)]


@dataclass
class _Running:
    """Per-epoch sums of the loss and of the method's statistics (saved in mid-epoch checkpoints)."""

    steps: int = 0
    loss: float = 0.0
    stats: dict[str, list[float]] = field(default_factory=dict)  # name → [numerator, denominator]

    def add(self, loss: float, stats: dict[str, tuple[float, float]]) -> None:
        self.steps += 1
        self.loss += loss
        for key, (numerator, denominator) in stats.items():
            total = self.stats.setdefault(key, [0.0, 0.0])
            total[0] += numerator
            total[1] += denominator

    def mean_loss(self) -> float:
        return self.loss / self.steps if self.steps else math.nan

    def mean_stats(self) -> dict[str, float]:
        return {f"train_{k}": n / d for k, (n, d) in self.stats.items() if d > 0}

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss": self.loss, "stats": {k: list(v) for k, v in self.stats.items()}}


def _evaluate(
    model: nn.Module,
    val_set: SegmentationDataset,
    config: TrainConfig,
    device: str,
    progress: bool,
    distributed: Distributed,
) -> ConfusionMatrix | None:
    """Validation confusion matrix; each process predicts its block of images, rank 0 adds them up."""
    own = distributed.shard(len(val_set))
    confusion = evaluate(model, val_set, batch_size=config.batch_size, device=device, progress=progress, indices=own)
    gathered = distributed.gather(confusion)
    if gathered is None:
        return None
    for other in gathered[1:]:
        confusion.matrix += other.matrix
    return confusion


def _silent(message: str) -> None:
    """The log of ranks other than 0: one process speaks for the job."""


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
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
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash; the epoch is re-run and re-logged
            if isinstance(row, dict) and isinstance(row.get("epoch", 0), int):
                rows.append(row)  # anything else is not a line harden wrote: skipped, not trusted
    return rows


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    rows = [r for r in _read_metrics(path) if r.get("epoch", 0) <= epochs_done]
    with atomic_open(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    # Appending keeps earlier lines intact whatever happens; a torn last line is dropped on read.
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
