"""Patch attacks at a fixed seed, compared with a baseline revision of harden: same figures?

    python bench/patch_before_after.py --baseline 21dbc4d

Runs every patch attack (3 steps, EOT 2, 2 RAD draws) on 3 synthetic 64×64 scenes against an
untrained segformer_tiny with MAS + RAD (seeded: the same weights on both sides), with Permute
targets and untargeted, through `evaluate_patch_attacks` — the code behind `harden attack
--patch`. Prints, per target and attack, whether the table's figures are equal and the largest
difference between the adversarial images. The baseline runs from a git worktree of REV in a
subprocess, in the same run. Made for issue 24's move of the patch attacks onto the Attack
template; the result is in docs/attacks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _runs import run_at_revision

NAMES = ("pgd", "dag", "ipatch", "ssap", "maxvar-dag", "maxattn-dag", "attention-fool", "patch-fool", "eot",
         "autoattack")  # fmt: skip


def _attack(name: str, **options: object) -> object:
    try:
        from harden.attacks import create_patch_attack  # after issue 24
    except ImportError:
        from harden.attacks.patch_attacks import PatchAttack  # type: ignore[import-not-found]

        return PatchAttack(name, **options)
    return create_patch_attack(name, **options)  # type: ignore[arg-type]


def measure(out: Path) -> None:
    """Run everything and save {target: {"rows": ..., "examples": {name: tensor}}} to `out`."""
    from harden.attacks.patch import PatchMask
    from harden.attacks.patch_evaluate import evaluate_patch_attacks
    from harden.data import open_dataset
    from harden.models import create_model
    from harden.ram import RAMConfig, insert_ram_

    torch.manual_seed(0)
    model = create_model("segformer_tiny", num_classes=19).eval()
    insert_ram_(model, RAMConfig())
    dataset = open_dataset("synthetic", "val", size=(64, 64), num_images=3, seed=0)
    result = {}
    for target in ("permute", "none"):
        names = [n for n in NAMES if not (target == "none" and n in ("ipatch", "ssap"))]
        attacks = [_attack(n, steps=3, eot=2, seed=1) for n in names]
        evaluation = evaluate_patch_attacks(model, dataset, attacks, PatchMask(16, "random", seed=2), target,  # type: ignore[arg-type]
                                            draws=2, seed=3, batch_size=2, examples=3)  # fmt: skip
        rows = {r["attack"]: [r["targeted_miou"], r["miou"], r["pixel_accuracy_outside"]] for r in evaluation.rows()}
        result[target] = {"rows": rows, "examples": evaluation.examples}
    torch.save(result, out)


def baseline(rev: str, out: Path) -> None:
    run_at_revision(
        rev, f"from pathlib import Path; from patch_before_after import measure; measure(Path({str(out)!r}))"
    )


def _same(a: list[float], b: list[float]) -> bool:
    return all(x == y or (x != x and y != y) for x, y in zip(a, b, strict=True))  # NaN equals NaN here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp) / "before.pt", Path(tmp) / "after.pt"
        baseline(args.baseline, before)
        measure(after)
        old, new = torch.load(before, weights_only=True), torch.load(after, weights_only=True)
    print(f"{'target':<9}{'attack':<16}{'figures':<11}max |Δ image|")
    for target, result in new.items():
        for name, figures in result["rows"].items():
            same = "equal" if _same(figures, old[target]["rows"][name]) else "DIFFERENT"
            delta = ""
            if name in result["examples"]:
                delta = f"{float((result['examples'][name] - old[target]['examples'][name]).abs().max()):.2g}"
            print(f"{target:<9}{name:<16}{same:<11}{delta}")


if __name__ == "__main__":
    main()
