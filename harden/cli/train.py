"""`harden train`: train a registry model on a dataset, with resumable checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from harden.cli._options import (
    EPS,
    RANGE,
    SIZE,
    Command,
    crf_settings,
    data_option,
    device_option,
    inference_options,
    progress_option,
    ram_options,
    ram_settings,
    resolve_device,
)

if TYPE_CHECKING:
    from harden.config import TrainConfig


TRAIN_HELP = """Train a segmentation model and validate it after every epoch.

Writes into --out: model.safetensors (weights + model config), state.safetensors (resume
state), config.json, metrics.jsonl (one line per epoch) and curves.png. A run killed at any
moment continues with --resume from its last complete epoch (or step, with --save-every);
the same --seed reproduces a
run exactly on CPU.

With --ram the model's attention layers compute the Robust Attention Mechanism: MAS bounds
every attention weight by --mas-threshold, RAD drops attention weights with probability
--rad-p in training AND evaluation. The settings are stored with the weights and restored
whenever the model is loaded.

With --adv the model trains on adversarial images crafted every step (L∞ --adv-eps, step
--adv-step, --adv-steps iterations) that replace part of each batch (--adv-ratio, half by
default):

\b
  sat     SAT (DDC-AT §4): BIM from the clean image
  pgd     PGD-AT: PGD on cross-entropy from a random start (Croce et al.'s AT^k)
  segpgd  SegPGD-AT: PGD on SegPGD's balanced cross-entropy
  rppgd   RP-PGD-AT: region-and-prototype PGD
  ddcat   DDC-AT (§5): auxiliary and mask branches share the backbone while training;
          only the main branch is saved, so exports never see the others
  pir     PIR-AT (Croce et al. §4.2): PGD-AT from a robust classifier's backbone
          (--init-backbone)

With --ram, RAD keeps drawing masks while the training attack runs (no EOT while training,
as in the RAM paper). metrics.jsonl also records the training attack's pixel accuracy
(train_adv_pixel_accuracy) and, for DDC-AT, the share of pixels the mask branch sends to the
auxiliary branch (train_mask_fraction, which should fall towards 0).

Distributed: `harden train --nproc N ...` (or `torchrun --nproc-per-node N -m harden train
...`) trains with DistributedDataParallel, gloo on CPU and NCCL on GPUs; --batch-size is the
global batch. The result equals one process's up to float reduction order (batch norm is
synchronised on GPUs only), and a run may resume with another N.

\b
Examples:
  harden train --model segformer_tiny --data synthetic --epochs 30 --out runs/seg
  harden train --model segformer_tiny --ram --mas-threshold 0.3 --rad-p 0.5 --out runs/seg-ram
  harden train --model segformer_tiny --ram --init-from runs/seg --epochs 10 --out runs/seg-ft
  harden train --model pspnet_r50 --data cityscapes:/data/cityscapes --crop 512x1024 --out runs/psp
  harden train --out runs/seg --resume --epochs 40     # train an existing run for longer
  harden train --model segformer_tiny --adv ddcat --out runs/seg-ddcat
  harden train --model segformer_tiny --ram --adv pgd --adv-steps 5 --adv-eps 4/255 --out runs/seg-ram-at5
  harden train --adv sat --nproc 2 --out runs/seg-sat
  harden train --model deeplabv3_tiny --scales 0.5,0.75,1 --crf --out runs/dl-ms-crf
"""


@click.command("train", cls=Command, help=TRAIN_HELP)
@click.option(
    "--model",
    "model_name",
    default="segformer_tiny",
    show_default=True,
    help="Registry model name (`harden models` lists them), or your own: hf:PATH (a local transformers "
    "folder with config.json and model.safetensors; fine-tuned from its weights) or "
    "module:package.module:factory (factory(num_classes=K) returns an nn.Module that maps ImageNet-normalised "
    "images to logits; importing it runs your code).",
)
@data_option()
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory for checkpoints, metrics.jsonl and curves.png.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate, decayed by a poly schedule. [default: 1e-3 AdamW, 1e-2 SGD]",
)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="[default: 1e-2 AdamW, 5e-4 SGD]")
@click.option(
    "--grad-clip", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Max gradient norm; 0 disables."
)
@click.option("--image-size", type=SIZE, default="128x256", show_default=True, help="Synthetic image size.")
@click.option("--crop", type=SIZE, default=None, help="Training crop. [default: image size; 512x512 on file datasets]")
@click.option(
    "--scale-range", type=RANGE, default="0.75,1.5", show_default=True, help="Random rescaling before the crop."
)
@click.option(
    "--train-images",
    type=click.IntRange(min=1),
    default=None,
    help="Synthetic: number of training scenes [400]; file datasets: use only the first N.",
)
@click.option("--val-images", type=click.IntRange(min=1), default=None, help="The same for validation [100].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed → same run on CPU.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data-loader processes.")
@ram_options
@inference_options
@click.option(
    "--init-from",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Fine-tune: start from the weights of this run directory (or model.safetensors).",
)
@click.option(
    "--adv",
    type=click.Choice(["sat", "pgd", "segpgd", "rppgd", "ddcat", "pir"]),
    default=None,
    help="Adversarial training (see below). [default: clean training]",
)
@click.option(
    "--adv-eps",
    type=EPS,
    default="0.03",
    show_default=True,
    help="L∞ radius of the training attack (0.03, 8/255, ...).",
)
@click.option("--adv-step", type=EPS, default="0.01", show_default=True, help="Step size α of the training attack.")
@click.option(
    "--adv-steps", type=click.IntRange(min=1), default=3, show_default=True, help="Iterations k of the training attack."
)
@click.option(
    "--adv-ratio",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.5,
    show_default=True,
    help="Share of each batch replaced by adversarial images.",
)
@click.option(
    "--init-backbone",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Robust classifier weights (safetensors or weights-only torch file) for the backbone; --adv pir needs it.",
)
@click.option(
    "--amp",
    type=click.Choice(["off", "bf16", "fp16"]),
    default="off",
    show_default=True,
    help="Mixed precision (CUDA only).",
)
@click.option(
    "--save-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also checkpoint every N steps inside an epoch, so --resume loses at most N steps. 0: epoch ends only.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train with N processes (DistributedDataParallel), launched through torchrun.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@device_option
@progress_option
def train_command(
    run_dir: Path, model_name: str, resume: bool, overwrite: bool, nproc: int, device: str, progress: bool,
    **settings: Any,
) -> None:  # fmt: skip
    """Parse → `prepare_run` and `train` (harden/training/loop.py) → print the summary line."""
    from harden.cli._exits import Failed
    from harden.config import check_amp, check_world_size
    from harden.errors import InputError
    from harden.outputs import exclusive
    from harden.training import TrainingDivergedError, describe_training, prepare_run, train

    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    device = resolve_device(device)
    config = _train_config(settings)
    check_world_size(config.batch_size, nproc)
    check_amp(config.amp, device)
    # On --resume the run's saved settings win; --epochs counts only when given explicitly.
    epochs_given = click.get_current_context().get_parameter_source("epochs") is not ParameterSource.DEFAULT
    model_config, config = prepare_run(run_dir, model_name, config, {}, **_model_settings(settings),
                                       resume=resume, overwrite=overwrite,
                                       resume_epochs=config.epochs if epochs_given else None)  # fmt: skip
    if nproc > 1:  # checked above, once, so bad input exits 2 here rather than inside N processes
        _launch_torchrun(nproc)
        return
    writer = os.environ.get("RANK", "0") == "0"  # one writer per run (under torchrun, rank 0)
    if writer:  # after prepare_run: bad input is refused before the directory (and its lock file) exists
        click.get_current_context().with_resource(exclusive(run_dir, "training run"))
        click.echo(describe_training(model_config, config, device, run_dir))
    try:
        result = train(run_dir, model_config, config, resume=resume, device=device,
                       progress=progress and sys.stderr.isatty(), log=click.echo)  # fmt: skip
    except TrainingDivergedError as err:
        raise Failed(str(err)) from err
    if writer:
        click.echo(json.dumps(result.to_dict()))


def _train_config(settings: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of the options named like its fields (paths as text, radii parsed)."""
    from harden.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items() if k in fields}
    return TrainConfig(**values)


def _model_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """What the options add to the model: RAM, input scales with their fusion, a CRF."""
    ram_keys = ("ram", "mas", "mas_threshold", "rad", "rad_p", "attn_temperature", "attn_learnable")
    crf_keys = ("crf_iterations", "crf_window", "crf_spatial_sigma", "crf_bilateral_sigma", "crf_color_sigma",
                "crf_weights")  # fmt: skip
    ram = ram_settings(*(settings[k] for k in ram_keys))
    crf_config = crf_settings(*(settings[k] for k in crf_keys))
    # the CRF settings are checked even without --crf, so a bad setting is never silently ignored
    return {"ram": ram, "scales": settings["scales"], "fusion": settings["fusion"],
            "crf": crf_config.to_dict() if settings["crf"] else None}  # fmt: skip


def _launch_torchrun(nproc: int) -> None:
    """Run this same command under torchrun with `nproc` processes (and without --nproc)."""
    from harden.cli._exits import Failed

    args = sys.argv[1:]
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "harden", *kept]
    click.echo("launching: " + " ".join(command))
    code = subprocess.call(command)
    if code != 0:
        raise Failed(f"torchrun exited with status {code}; the processes' messages are above")
