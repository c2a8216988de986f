"""`harden demo`: the whole pipeline on the built-in synthetic street scenes, in one command.

It is exactly `harden train --ram` → `harden export --precision int8` → `harden verify` on the
fp32 and the int8 file: the commands are invoked with the options printed before each step, so a
user can re-run or vary any step by hand.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from harden.cli._options import SIZE, progress_option


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Directory for the run, the export and the reports.")  # fmt: skip
@click.option("--model", "model_name", default="segformer_tiny", show_default=True,
              help="An attention model of the registry (`harden models`).")  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--image-size", type=SIZE, default="64x128", show_default=True, help="Synthetic image size.")
@click.option("--images", type=click.IntRange(min=1), default=32, show_default=True,
              help="At most this many verification images: verify runs with --images auto, in batches of 8, until "
              "every gate is decided (a gate whose figure varies from image to image decides from 32 images on: "
              "docs/verdicts.md).")  # fmt: skip
@click.option("--quick", is_flag=True, help="A smoke test of the installation in about a minute: 64x64 images, "
              "2 epochs, batches of 2 images up to 8, few attack iterations. Its numbers mean nothing.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@progress_option
@click.pass_context
def demo_command(
    ctx: click.Context,
    out: Path,
    model_name: str,
    epochs: int,
    image_size: tuple[int, int],
    images: int,
    quick: bool,
    overwrite: bool,
    progress: bool,
) -> None:
    """Train a small attention model with RAM, export it to ONNX (fp32 and int8) and verify that
    its robustness survives deployment. About 13 minutes on 2 CPU cores with the defaults.

    \b
    OUT/run                 the trained run (curves.png: training curves)
    OUT/export              model.fp32.onnx, model.int8.onnx, parity.json, manifest.json
    OUT/verify-fp32         verify.json, junit.xml and report.html for the fp32 file
    OUT/verify-int8         the same for the int8 file

    Exit code 1 when a verification gate fails (the reports say which and why), 3 when one could
    not decide within --images.
    """
    from harden.cli._exits import Failed, Inconclusive
    from harden.cli.export import export_command
    from harden.cli.train import train_command
    from harden.cli.verify import verify_command
    from harden.errors import InputError

    if out.exists():
        if not overwrite:
            raise InputError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
        shutil.rmtree(out)
    run_dir, export_dir = out / "run", out / "export"
    # a tour in minutes: FGSM and PGD, not verify's default `strongest` ensemble at its paper
    # budgets (hours for RAD's EOT on a CPU); a release verification keeps the default
    attack_options: dict[str, object] = {"attack_names": ("fgsm", "pgd")}
    if quick:
        epochs, image_size, images = 2, (64, 64), 8
        attack_options |= {"eps_values": (8 / 255,), "iters": 2, "queries": 10, "divergence_steps": 2, "eot": 2,
                          "draws": 2}  # fmt: skip
    batch = 2 if quick else min(8, images)
    size = f"{image_size[0]}x{image_size[1]}"
    flags = " --attack fgsm,pgd"
    if quick:
        flags += " --eps 8/255 --iters 2 --queries 10 --divergence-steps 2 --eot 2 --draws 2"
    start = time.perf_counter()

    _step(1, f"harden train --model {model_name} --ram --epochs {epochs} --image-size {size} --out {run_dir}")
    ctx.invoke(train_command, model_name=model_name, run_dir=run_dir, epochs=epochs, image_size=image_size,
               ram=True, progress=progress)  # fmt: skip

    _step(2, f"harden export {run_dir} --out {export_dir} --precision int8")
    ctx.invoke(export_command, run_dir=run_dir, out=export_dir, precision="int8")

    failed, undecided = [], []
    for number, precision in enumerate(("fp32", "int8"), start=3):
        report = out / f"verify-{precision}"
        _step(number, f"harden verify {export_dir} --artefact model.{precision}.onnx --twin graph --twin {run_dir} "
                      f"--images auto --max-images {images} --batch-size {batch}{flags} --out {report}")  # fmt: skip
        try:
            ctx.invoke(verify_command, deployed=export_dir, artefact=f"model.{precision}.onnx",
                       twin_specs=("graph", str(run_dir)), images=None, max_images=images, batch_size=batch,
                       out=report, progress=progress, **attack_options)  # fmt: skip
        except Inconclusive as err:
            click.echo(str(err.message), err=True)
            undecided.append(precision)
        except Failed as err:
            click.echo(str(err.message), err=True)
            failed.append(precision)

    minutes = (time.perf_counter() - start) / 60
    click.echo(f"\ndemo finished in {minutes:.1f} min; open {out / 'verify-fp32' / 'report.html'} "
               f"and {out / 'verify-int8' / 'report.html'}")  # fmt: skip
    if failed:
        raise Failed(f"verification failed for {', '.join(failed)} (see the reports)")
    if undecided:
        raise Inconclusive(f"verification inconclusive for {', '.join(undecided)} within {images} images (see the "
                           "reports)")  # fmt: skip


def _step(number: int, command: str) -> None:
    click.secho(f"\n[{number}/4] {command}", bold=True)
