"""Patch robustness, the shape of the RAM paper's table 3: baseline vs +MAS vs +RAD vs +MAS+RAD
(one trained segformer_tiny fine-tuned under each setting for the same epochs) and a CNN
(pspnet_tiny, which has no attention for MaxAttnDAG to read), under Permute and Strip targets
with DAG, IPatch, MaxAttnDAG, EOT and AutoAttack (targeted APGD-CE + Square in the patch).
Trained runs and reports in --out are reused.

Every number comes from `harden attack RUN --patch M --target T` (targeted mIoU, worst over 3
RAD draws; RAD models are attacked with EOT 8 by every attack, so "eot" equals "dag" there).
Prints a Markdown table for docs/.

    python bench/patch_robustness.py [--out runs/patch-study] [--images 8] [--iters 100] [--patch 32]
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from click.testing import CliRunner

from harden.attacks import create_patch_attack
from harden.cli import cli

SIZE = "64x128"
VARIANTS = {"baseline": [], "+MAS": ["--ram", "--no-rad"], "+RAD": ["--ram", "--no-mas"], "+MAS+RAD": ["--ram"]}
ATTACKS = "dag,ipatch,maxattn-dag,eot,autoattack"


def _cli(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"harden {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output


def train_runs(out: Path, base_epochs: int = 30, tune_epochs: int = 10) -> dict[str, Path]:
    """The study's models (trained once, reused from `out`): label → run directory."""
    common = ["--image-size", SIZE, "--no-progress"]
    base = out / "segformer-base"
    if not (base / "model.safetensors").is_file():
        _cli("train", "--model", "segformer_tiny", "--epochs", base_epochs, "--out", base, "--overwrite", *common)
    runs = {}
    for name, flags in VARIANTS.items():
        run = out / f"segformer{name.replace('+', '-') if name != 'baseline' else '-ft'}"
        if not (run / "model.safetensors").is_file():
            _cli("train", "--model", "segformer_tiny", *flags, "--init-from", base, "--epochs", tune_epochs,
                 "--lr", "3e-4", "--out", run, "--overwrite", *common)  # fmt: skip
        runs[f"segformer_tiny {name}"] = run
    cnn = out / "pspnet"
    if not (cnn / "model.safetensors").is_file():
        _cli("train", "--model", "pspnet_tiny", "--epochs", base_epochs, "--out", cnn, "--overwrite", *common)
    runs["pspnet_tiny (CNN)"] = cnn
    return runs


def study_parser(description: str) -> argparse.ArgumentParser:
    """The options every patch-study script takes: where the runs live and the attack budget."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("runs/patch-study"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--patch", type=int, default=32)
    return parser


def main() -> None:
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--tune-epochs", type=int, default=10)
    args = parser.parse_args()
    runs = train_runs(args.out, args.base_epochs, args.tune_epochs)
    cnn = runs["pspnet_tiny (CNN)"]

    table: dict[str, dict[str, dict[str, float | None]]] = {}
    outside: dict[str, dict[str, dict[str, float | None]]] = {}
    for label, run in runs.items():
        attacks = (
            ATTACKS
            if run != cnn
            else ",".join(a for a in ATTACKS.split(",") if not create_patch_attack(a).reads_attention)
        )
        for target in ("permute", "strip"):
            report = args.out / "reports" / f"{run.name}-{target}"
            if not (report / "patch_attack.json").is_file():
                _cli("attack", run, "--patch", args.patch, "--target", target, "--attack", attacks, "--images",
                     args.images, "--iters", args.iters, "--out", report, "--no-progress")  # fmt: skip
            rows = json.loads((report / "patch_attack.json").read_text())["rows"]
            table.setdefault(label, {})[target] = {r["attack"]: r["targeted_miou"] for r in rows}
            table[label][target]["clean mIoU"] = rows[0]["miou"]
            outside.setdefault(label, {})[target] = {r["attack"]: r["pixel_accuracy_outside"] for r in rows}

    print(f"`python bench/patch_robustness.py --images {args.images} --iters {args.iters} --patch {args.patch}` — "
          f"{date.today()}; synthetic {SIZE}, {args.patch}×{args.patch} patch lower-right; "
          "worst over 3 RAD draws")  # fmt: skip
    columns = [f"{t} {a}" for t in ("permute", "strip") for a in ATTACKS.split(",")]
    for title, values, first in (("targeted mIoU ↓ (prediction vs target)", table, "clean mIoU"),
                                 ("pixel accuracy outside the patch ↑ (eq. 21)", outside, "clean")):  # fmt: skip
        print(f"\n{title}\n")
        print(f"| model | {first} | " + " | ".join(columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        for label, by_target in values.items():
            cells = [_fmt(by_target[t].get(a, "n/a")) for t in ("permute", "strip") for a in ATTACKS.split(",")]
            print(f"| {label} | {_fmt(by_target['permute'][first])} | " + " | ".join(cells) + " |")


def _fmt(value: float | str | None) -> str:
    return "—" if value is None else value if isinstance(value, str) else f"{value:.4f}"


if __name__ == "__main__":
    main()
