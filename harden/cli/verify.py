"""`harden verify`: re-attack a deployed model through its twins and gate the release."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harden.cli._options import (
    EPS_LIST,
    IMAGES,
    NAMES,
    RGB,
    SIZE,
    Command,
    command_line,
    data_option,
    device_option,
    out_option,
    progress_option,
    randomness_options,
)
from harden.data_spec import MAX_ITERS, MAX_QUERIES

VERIFY_HELP = """Does the robustness survive deployment? Verify DEPLOYED (a `harden export` directory, a file
in one, or any segmentation model's ONNX file) against its twins, and exit 0 (all gates pass),
1 (a gate failed), 3 (inconclusive: no gate failed, but one could not decide at the stated
confidence — the release does not pass) or 2 (bad input).

In an export directory every file is hash-checked against the export manifest first. Then, on the verification
images: parity of engine and twins on clean images; white-box attacks crafted on each twin
(EOT over RAD seeds) and predicted by the engine over several RAD draws; Square and random
noise run on the engine by queries; a divergence search for inputs where the engine and the
fp32 reference disagree; deployment audits (MAS/RAD nodes, RAD seed, weights, int8
calibration) and the sanity checks of docs/design.md §6. The verdict is the worst case over all.

A bare ONNX file (from any exporter, optimiser or quantiser) is verified unsigned: say how it
is fed (--input/--output when ambiguous, --pixel-range, --mean/--std when normalisation happens
outside the graph), give --data, and --reference its float32 original when it is quantised;
logits at a lower resolution are upsampled to the labels. The audits that need a manifest
are n/a and the report says the deployment is unsigned.

\b
Gates (defaults per precision fp32 / fp16 / int8):
  clean_agreement        0.999 / 0.99 / 0.90   engine vs twin argmax, clean images
  clean_miou_delta       0.001 / 0.01 / 0.05   |ΔmIoU| engine vs twin, clean images
  adversarial_agreement  0.99  / 0.97 / 0.85   on adversarial and divergence images
  survival               0.95                  engine robust mIoU ≥ 0.95 × twin's
  min_robust_miou        0 (off)               engine worst-case mIoU floor
A signed export raises clean_agreement[source] to the agreement the export recorded minus 1
point (unless --gate clean_agreement=… is given): a file worse than its own export fails.
Fail closed: a failed audit, a failed sanity check, or no images fails. A sanity check whose
premise the attack list leaves out (iterative>single needs fgsm) is n/a and says why.

Every gate on a figure measured on the images decides from its confidence interval
(--confidence, default 0.95): pass when the interval clears the gate, fail when it misses it,
inconclusive when it straddles it, with about how many more images would decide. The image is
the unit, and each interval belongs to a confidence sequence that holds at every number of
images at once (docs/verdicts.md): --images auto looks after every batch, up to --max-images,
until every gate is decided, and a resumed or extended run may look again, at no cost in
confidence. A PASS needs every gate; the gates a FAIL names are controlled together (Holm).
The survival gate compares the engine and each twin on the same candidate images.

Writes OUT/verify.json, OUT/junit.xml (one test case per gate) and OUT/report.html.
The state is saved after every batch, so an interrupted run continues with --resume.

Large runs shard across processes with torchrun: each rank verifies a contiguous block of
the batches, rank 0 merges them (the result equals a one-process run) and writes the reports.

\b
Examples:
  harden verify exports/seg --twin graph --twin runs/seg
  harden verify exports/seg --twin graph --twin runs/seg --images auto --max-images 64
  harden verify exports/seg/model.int8.onnx --attack pgd,apgd-ce --eps 2/255,4/255 --gate survival=0.9
  torchrun --nproc-per-node 4 -m harden verify exports/seg --twin runs/seg --images 500
  harden verify segformer.int8.onnx --reference segformer.onnx --mean 0.485,0.456,0.406 \\
      --std 0.229,0.224,0.225 --data cityscapes:/data/cityscapes
"""


@click.command("verify", cls=Command, help=VERIFY_HELP, renamed={"--attacks": "--attack", "--report": "--out"})
@click.argument("deployed", type=click.Path(path_type=Path))
@click.option(
    "--twin",
    "twin_specs",
    multiple=True,
    default=("graph",),
    show_default=True,
    metavar="graph|RUN_DIR|hf:PATH|module:M:F",
    help="Gradient-enabled twin(s) to craft attacks on: 'graph' rebuilds the deployed ONNX graph in PyTorch "
    "(with its fp16/int8 precision); a run directory is the trained checkpoint (must be the exported one). "
    "For a bare ONNX file, your trained PyTorch model: hf:PATH (a local transformers folder) or "
    "module:package.module:factory (factory(num_classes=K) returns it; importing runs your code); it is fed "
    "exactly as the file is. Repeat for several.",
)
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A bare file's float32 ONNX original (before quantisation, fp16 conversion or optimisation): "
              "the reference for survival, divergence and the weights. [default: an fp32 file is its own]")  # fmt: skip
@click.option("--input", "input_name", default=None, metavar="NAME",
              help="A bare file's image input. [default: 'image', else its only 4-D input]")  # fmt: skip
@click.option("--output", "output_name", default=None, metavar="NAME",
              help="A bare file's logits output. [default: 'logits', else its only output]")  # fmt: skip
@click.option("--pixel-range", type=click.Choice(["1", "255"]), default="1", show_default=True,
              help="What a bare file's input reads for a white pixel: [0, 1] or [0, 255] pixels.")  # fmt: skip
@click.option("--mean", type=RGB, default=None,
              help="Per-channel mean subtracted before a bare file's graph (its pixel range), with --std.")  # fmt: skip
@click.option("--std", type=RGB, default=None, help="Per-channel std, with --mean.")
@click.option("--artefact", default=None, help="File of the export to verify. [default: the engine, else the "
              "exported precision's ONNX]")  # fmt: skip
@data_option(default=None)
@click.option("--split", default="val", show_default=True)
@click.option(
    "--images",
    type=IMAGES,
    default="8",
    show_default=True,
    help="Verification images, or 'auto': as many as the gates need to decide, up to --max-images.",
)
@click.option(
    "--max-images", type=click.IntRange(min=1), default=64, show_default=True, help="The budget of --images auto."
)
@click.option(
    "--confidence",
    type=click.FloatRange(0.5, 1, max_open=True),
    default=0.95,
    show_default=True,
    help="Confidence of every gate's interval (two-sided).",
)
@click.option("--image-size", type=SIZE, default=None, help="Synthetic image size. [default: the run's]")
@click.option("--attack", "attack_names", type=NAMES, default="fgsm,strongest", show_default=True,
              help="White-box attacks crafted on every twin (strongest: an adaptive ensemble of the public SEA "
                   "and ECCV 2024 members, measured against their code in docs/attacks.md; pgd for a quick "
                   "look); Square and noise always run on the engine.")  # fmt: skip
@click.option("--eps", "eps_values", type=EPS_LIST, default="4/255,8/255", show_default=True)
@click.option(
    "--iters",
    type=click.IntRange(min=1, max=MAX_ITERS),
    default=None,
    help="Iterations of each white-box attack (of each member of an ensemble). [default: each attack's own; "
    "100 per member of strongest]",
)
@click.option("--queries", type=click.IntRange(min=1, max=MAX_QUERIES), default=100, show_default=True,
              help="Square's queries.")  # fmt: skip
@click.option("--divergence-steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="Steps of the twin–engine divergence search (0 skips it).")  # fmt: skip
@randomness_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--gates", "gate_file", type=click.Path(path_type=Path), default=None,
              help="TOML or JSON file of gate values (see below).")  # fmt: skip
@click.option("--gate", "gate_pairs", multiple=True, metavar="NAME=VALUE", help="Override one gate, e.g. survival=0.9.")
@out_option("Report directory. [default: DEPLOYED/verify]")
@device_option(default="cpu", extra_help="The twins and every attack run there, and the engine: ONNX Runtime's "
               "CUDA provider (needs onnxruntime-gpu) or TensorRT on that GPU. cpu by default, so that a release's "
               "verdict does not depend on the machine CI lands on. Attack arithmetic is float32 "
               "everywhere.")  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/verify.state (saved after "
              "every batch; the same arguments are required).")  # fmt: skip
@click.option("--no-evidence", is_flag=True, help="Do not keep the evidence set (OUT/evidence: the clean and worst "
              "adversarial images with the engine's predictions) that `harden replay` judges rebuilds on.")  # fmt: skip
@progress_option
def verify_command(
    deployed: Path, twin_specs: tuple[str, ...], reference: Path | None, input_name: str | None,
    output_name: str | None, pixel_range: str, mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None, artefact: str | None, data: str | None, split: str, images: int | None,
    max_images: int, confidence: float, image_size: tuple[int, int] | None, attack_names: tuple[str, ...],
    eps_values: tuple[float, ...], iters: int | None, queries: int, divergence_steps: int, eot: int | None,
    draws: int | None, seed: int, batch_size: int, gate_file: Path | None, gate_pairs: tuple[str, ...],
    out: Path | None, device: str, resume: bool, no_evidence: bool, progress: bool,
) -> None:  # fmt: skip
    """Parse → `verify_release` (runtime/verification.py) → print the gates; exit 1 if one failed, 3 if
    one could not decide."""
    from harden.attack_catalogue import check_attack_names
    from harden.cli._exits import Failed, Inconclusive
    from harden.devices import local_rank_from_environment, resolve_device
    from harden.memory import require_model_fits
    from harden.runtime.twins import InterfaceOptions, load_twins, open_deployment
    from harden.runtime.verification import (
        Confidence,
        gate_overrides,
        release_gates,
        verification_data,
        verify_release,
    )
    from harden.runtime.verify import VerifyOptions

    options = VerifyOptions(
        attacks=tuple(check_attack_names(attack_names)), eps_values=eps_values, steps=iters, eot=eot, draws=draws,
        queries=queries, divergence_steps=divergence_steps, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    overrides = gate_overrides(gate_file, gate_pairs)
    interface = InterfaceOptions(input_name, output_name, float(pixel_range), mean, std)
    deployment = open_deployment(deployed, artefact, interface=interface, reference=reference)
    gates = release_gates(deployment, overrides)
    twins = load_twins(list(twin_specs), deployment)
    level = Confidence(confidence) if images is not None else Confidence.auto(confidence, batch_size, max_images)
    dataset = verification_data(deployment, list(twin_specs), data=data, split=split, images=images or max_images,
                                   image_size=image_size, seed=seed)  # fmt: skip
    target = resolve_device(device, local_rank=local_rank_from_environment())
    height, width = dataset[0][0].shape[-2:]
    static = deployment.image_size is not None
    require_model_fits(twins, batch_size, height, width, what="attacking the twins", backward=True,
                       classes=dataset.num_classes, device=target, exact_size=static)  # fmt: skip
    verdict = verify_release(
        deployment, twins, dataset, options, gates, out or deployment.root / "verify",
        device=target, resume=resume,
        progress=progress and sys.stderr.isatty(), command=command_line(), log=click.echo, confidence=level,
        evidence=not no_evidence,
    )  # fmt: skip
    shown = {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}
    for gate in verdict.gates:
        click.echo(f"  [{shown[gate.outcome]}] {gate.name:<32} {gate.detail}")
    for line in verdict.not_judged:
        click.echo(f"  [not judged] {line}")
    if verdict.written:
        click.echo("wrote " + ", ".join(str(p) for p in verdict.written))
    if verdict.failed == ["engine-arithmetic"]:
        raise Failed(
            "verification FAILED: engine-arithmetic — the file is faithful to the model, but this engine on this "
            "hardware computes something else (cause and remedy in the engine-arithmetic gate above and in the report)"
        )
    if verdict.outcome == "inconclusive":
        raise Inconclusive(
            f"verification INCONCLUSIVE on {verdict.images} images at {confidence:.0%} confidence: "
            f"{', '.join(verdict.failed)} could not decide — the release does not pass; verify more images "
            "(--images N, or --images auto)"
        )
    if verdict.failed:
        raise Failed(f"verification FAILED: {', '.join(verdict.failed)}")
    if verdict.gates:
        click.echo(f"verification PASSED on {verdict.images} images at {confidence:.0%} confidence")
