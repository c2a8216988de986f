"""Sensitivity of the adaptive patch attacks to α, the weight of their attention term
(RAM paper A.16–A.17: MaxVarDAG = DAG + α·variance, MaxAttnDAG = DAG + α·attention mass on the
patch). α = 0 is DAG itself, so each row says whether, and at which α, the attention term makes
DAG stronger against each model of `patch_robustness.py` (same trained runs, reused from --out).

Every number comes from `harden attack RUN --patch M --target permute --attack maxattn-dag,maxvar-dag
--alpha A` (pixel accuracy outside the patch, eq. 21, worst over 3 RAD draws; RAD models are
attacked with EOT 8). Prints Markdown tables for docs/.

    python bench/patch_alpha_sweep.py [--out runs/patch-study] [--images 8] [--iters 100] [--patch 32]
"""

from __future__ import annotations

import json
from datetime import date

from patch_robustness import _cli, _fmt, study_parser, train_runs

ATTACKS = ("maxattn-dag", "maxvar-dag")
ALPHAS = (0.0, 0.3, 1.0, 3.0, 10.0, 30.0)


def main() -> None:
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--target", default="permute", choices=("permute", "strip", "none"))
    args = parser.parse_args()
    runs = {label: run for label, run in train_runs(args.out).items() if "CNN" not in label}
    table: dict[str, dict[str, dict[float, dict[str, float]]]] = {}
    for label, run in runs.items():
        for alpha in ALPHAS:
            report = args.out / "alpha-sweep" / f"{run.name}-{args.target}-{alpha:g}"
            if not (report / "patch_attack.json").is_file():
                _cli("attack", run, "--patch", args.patch, "--target", args.target, "--attack", ",".join(ATTACKS),
                     "--alpha", alpha, "--images", args.images, "--iters", args.iters, "--out", report,
                     "--no-progress")  # fmt: skip
            for row in json.loads((report / "patch_attack.json").read_text())["rows"]:
                table.setdefault(label, {}).setdefault(row["attack"], {})[alpha] = row

    print(f"`python bench/patch_alpha_sweep.py --images {args.images} --iters {args.iters} --patch {args.patch} "
          f"--target {args.target}` — {date.today()}; worst over 3 RAD draws")  # fmt: skip
    for metric, title in (("pixel_accuracy_outside", "pixel accuracy outside the patch ↓ for the attacker"),
                          ("targeted_miou", "targeted mIoU ↑ for the attacker")):  # fmt: skip
        print(f"\n{title} (α = 0 is DAG)\n")
        print("| model | attack | " + " | ".join(f"α = {a:g}" for a in ALPHAS) + " |")
        print("|---|---|" + "---|" * len(ALPHAS))
        for label, by_attack in table.items():
            for attack in ATTACKS:
                cells = [_fmt(by_attack[attack][a][metric]) for a in ALPHAS]
                print(f"| {label} | {attack} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
