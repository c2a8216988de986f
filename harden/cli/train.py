"""`harden train`: train a registry model on a dataset, with resumable checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from harden.cli._options import (
    RANGE,
    SIZE,
    crf_settings,
    data_option,
    device_option,
    inference_options,
    parse_scales,
    progress_option,
    ram_options,
    ram_settings,
    resolve_device,
)


@click.command("train")
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
    "--adv-eps", default="0.03", show_default=True, help="L∞ radius of the training attack (0.03, 8/255, ...)."
)
@click.option("--adv-step", default="0.01", show_default=True, help="Step size α of the training attack.")
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
    model_name: str,
    data: str,
    run_dir: Path,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float | None,
    weight_decay: float | None,
    grad_clip: float,
    image_size: tuple[int, int],
    crop: tuple[int, int] | None,
    scale_range: tuple[float, float],
    train_images: int | None,
    val_images: int | None,
    seed: int,
    workers: int,
    ram: bool,
    mas: bool | None,
    mas_threshold: float | None,
    rad: bool | None,
    rad_p: float | None,
    attn_temperature: float | None,
    attn_learnable: bool,
    scales_spec: str | None,
    fusion: str,
    crf: bool,
    crf_iterations: int,
    crf_window: int,
    crf_spatial_sigma: float,
    crf_bilateral_sigma: float,
    crf_color_sigma: float,
    crf_weights: tuple[float, float],
    init_from: Path | None,
    adv: str | None,
    adv_eps: str,
    adv_step: str,
    adv_steps: int,
    adv_ratio: float,
    init_backbone: Path | None,
    amp: str,
    save_every: int,
    nproc: int,
    resume: bool,
    overwrite: bool,
    device: str,
    progress: bool,
) -> None:
    """Train a segmentation model and validate it after every epoch.

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
    from harden.attacks.threat import format_eps, parse_eps
    from harden.cli import Failed
    from harden.config import check_amp, check_world_size
    from harden.errors import InputError
    from harden.outputs import exclusive
    from harden.training import TrainConfig, TrainingDivergedError, prepare_run, train

    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    check_world_size(batch_size, nproc)
    device = resolve_device(device)
    check_amp(amp, device)
    config = TrainConfig(
        data=data,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        image_size=image_size,
        crop=crop,
        scale_range=scale_range,
        train_images=train_images,
        val_images=val_images,
        seed=seed,
        workers=workers,
        init_from=str(init_from) if init_from is not None else None,
        adv=adv,
        adv_eps=parse_eps(adv_eps),
        adv_step=parse_eps(adv_step),
        adv_steps=adv_steps,
        adv_ratio=adv_ratio,
        init_backbone=str(init_backbone) if init_backbone is not None else None,
        amp=amp,
        save_every=save_every,
    )
    ram_config = ram_settings(ram, mas, mas_threshold, rad, rad_p, attn_temperature, attn_learnable)
    scales = parse_scales(scales_spec)
    crf_config = crf_settings(
        crf_iterations, crf_window, crf_spatial_sigma, crf_bilateral_sigma, crf_color_sigma, crf_weights
    )  # checked even without --crf, so a bad setting is never silently ignored
    # On --resume the run's saved settings win; --epochs counts only when given explicitly.
    epochs_given = click.get_current_context().get_parameter_source("epochs") is not ParameterSource.DEFAULT
    model_config, config = prepare_run(
        run_dir,
        model_name,
        config,
        {},
        ram=ram_config,
        scales=scales,
        fusion=fusion,
        crf=crf_config.to_dict() if crf else None,
        resume=resume,
        overwrite=overwrite,
        resume_epochs=epochs if epochs_given else None,
    )
    if nproc > 1:  # checked above, once, so bad input exits 2 here rather than inside N processes
        _launch_torchrun(nproc)
        return
    if os.environ.get("RANK", "0") == "0":  # one writer per run (under torchrun, rank 0 holds it)
        # after prepare_run: bad input is refused before the directory (and its lock file) exists
        click.get_current_context().with_resource(exclusive(run_dir, "training run"))
    ram_note = ""
    if model_config.ram is not None:
        from harden.ram import RAMConfig

        ram_note = f" with RAM {RAMConfig.from_dict(model_config.ram).describe()}"
    if model_config.scales is not None:
        ram_note += f" at scales {','.join(f'{s:g}' for s in model_config.scales)} ({model_config.fusion})"
    if model_config.crf is not None:
        ram_note += " with a mean-field CRF"
    adv_note = ""
    if config.adv is not None:
        adv_note = (
            f", adversarial training {config.adv} (L∞ ε={format_eps(config.adv_eps)}, α={format_eps(config.adv_step)}, "
            f"{config.adv_steps} steps, {config.adv_ratio:.0%} of each batch)"
        )
    if os.environ.get("RANK", "0") == "0":
        click.echo(
            f"training {model_config.name}{ram_note}{adv_note} on {config.data} for {config.epochs} epochs "
            f"on {device} → {run_dir}"
        )
    try:
        result = train(
            run_dir,
            model_config,
            config,
            resume=resume,
            device=device,
            progress=progress and sys.stderr.isatty(),
            log=click.echo,
        )
    except TrainingDivergedError as err:
        raise Failed(str(err)) from err
    if os.environ.get("RANK", "0") != "0":
        return
    click.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "epochs": result.epochs_done,
                "val_miou": round(result.val_miou, 4),
                "val_pixel_accuracy": round(result.val_pixel_accuracy, 4),
                "seconds": round(result.seconds, 1),
            }
        )
    )


def _launch_torchrun(nproc: int) -> None:
    """Run this same command under torchrun with `nproc` processes (and without --nproc)."""
    from harden.cli import Failed

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
