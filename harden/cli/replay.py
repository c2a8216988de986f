"""`harden replay`: re-judge a rebuilt deployment on the evidence set a verify run left."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harden.cli._options import command_line, device_option, out_option, progress_option


@click.command("replay")
@click.argument("evidence_path", metavar="EVIDENCE", type=click.Path(path_type=Path))
@click.argument("deployed", type=click.Path(path_type=Path))
@click.option("--artefact", default=None, help="File of the export to replay. [default: the engine, else the "
              "exported precision's ONNX]")  # fmt: skip
@click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=0.95, show_default=True,
              help="Confidence of every gate's interval (two-sided).")  # fmt: skip
@click.option("--gates", "gate_file", type=click.Path(path_type=Path), default=None,
              help="TOML or JSON file of gate values, as for harden verify.")  # fmt: skip
@click.option("--gate", "gate_pairs", multiple=True, metavar="NAME=VALUE", help="Override one gate, e.g. survival=0.9.")
@out_option("Report directory. [default: DEPLOYED/replay, or beside the file]")
@device_option(default="cpu", extra_help="Where the engine runs: ONNX Runtime's CUDA provider (needs "
               "onnxruntime-gpu) or TensorRT on that GPU.")  # fmt: skip
@progress_option
def replay_command(
    evidence_path: Path, deployed: Path, artefact: str | None, confidence: float, gate_file: Path | None,
    gate_pairs: tuple[str, ...], out: Path | None, device: str, progress: bool,
) -> None:  # fmt: skip
    """Re-judge DEPLOYED (a rebuilt engine, another precision, an ONNX Runtime upgrade, any file of
    a harden export or a bare ONNX file) on EVIDENCE — the evidence set `harden verify` left in
    OUT/evidence (or that report folder) — in seconds: no twin, no gradient, only the engine's
    own forward passes on the verified images, clean and at each ε the adversarial image the
    verified engine scored worst on, in every RAD draw verify used.

    The gates are verify's, against the verified engine's recorded predictions:
    clean-agreement[recorded], adversarial-agreement[recorded]@ε and survival[recorded]@ε (the
    rebuild's worst-case mIoU over the recorded one), with the precision's thresholds and the
    same three outcomes. Exit 0 pass, 1 a gate failed, 3 inconclusive, 2 bad input (a tampered,
    truncated or missing evidence file is named).

    Writes OUT/replay.json, OUT/junit.xml and OUT/replay.html.

    \b
    Examples (after `harden verify exports/demo --twin graph --out reports/demo`):
      harden replay reports/demo exports/demo --artefact model.int8.onnx
      harden replay reports/demo/evidence rebuilt/model.fp32.onnx --out reports/rebuild
    """
    from harden.cli._exits import Failed, Inconclusive
    from harden.cli._options import resolve_device
    from harden.outputs import exclusive
    from harden.runtime.engines import open_engine
    from harden.runtime.evidence import open_evidence
    from harden.runtime.gates import Gates, verdict_of
    from harden.runtime.replay import replay, replay_gates
    from harden.runtime.replay_report import summarise, write_replay_reports
    from harden.runtime.twins import InterfaceOptions, open_deployment
    from harden.runtime.verification import gate_overrides

    evidence = open_evidence(evidence_path)
    recorded = evidence.manifest["deployment"].get("interface") or {}
    interface = None
    if Path(deployed).suffix == ".onnx" and not (Path(deployed).parent / "manifest.json").is_file():
        interface = InterfaceOptions(None, None, float(recorded.get("pixel_range", 1.0)),
                                     _triple(recorded.get("mean")), _triple(recorded.get("std")))  # fmt: skip
    deployment = open_deployment(deployed, artefact, interface=interface)
    gates = Gates.for_precision(deployment.precision).with_values(gate_overrides(gate_file, gate_pairs))
    out = out or (deployment.root / "replay")
    with (
        exclusive(out, "replay"),
        open_engine(deployment.artefact, resolve_device(device), deployment.interface) as engine,
    ):
        click.echo(f"replaying {evidence.image_count} evidence images of {evidence.manifest['deployment']['artefact']} "
                   f"on {deployment.artefact} ({deployment.precision}) ...")  # fmt: skip
        result = replay(evidence, deployment, engine, progress=progress and sys.stderr.isatty(), log=click.echo)
        results = replay_gates(result, gates, confidence)
        settings = {"gates": gates.to_dict(), "device": device}
        written = write_replay_reports(summarise(result, results, settings, command_line(), confidence), out)
    shown = {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}
    for gate in results:
        click.echo(f"  [{shown[gate.outcome]}] {gate.name:<40} {gate.detail}")
    click.echo("wrote " + ", ".join(str(p) for p in written))
    failed = [g.name for g in results if not g.passed]
    outcome = verdict_of(results)
    if outcome == "inconclusive":
        raise Inconclusive(f"replay INCONCLUSIVE: {', '.join(failed)} could not decide — the rebuild does not pass")
    if failed:
        raise Failed(f"replay FAILED: {', '.join(failed)}")
    click.echo(f"replay PASSED on {result.images} evidence images in {result.seconds['total']:.1f} s")


def _triple(value: object) -> tuple[float, float, float] | None:
    if not isinstance(value, list) or len(value) != 3:
        return None
    return (float(value[0]), float(value[1]), float(value[2]))
