"""Does a mean-field CRF make a model robust, or only mask its gradients? (Arnab et al. §7)

The same network is attacked without and with a CRF appended. The paper's findings to test:
the CRF resists *untargeted* attacks (FGSM, I-FGSM: §7.1) because mean field makes marginals
confident and the loss gradient small; perturbations crafted on the *unaries* (the network
without the CRF) transfer to the CRF model and beat the white-box attack on it (§7.2); and
*targeted* attacks (FGSM II, Iterative FGSM II towards the least likely class) are as effective
with the CRF as without (§7.2). The attack suite's sanity checks run on the CRF evaluation,
with the unaries as a surrogate, so gradient masking fails the white>surrogate check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from harden.attacks.checks import Check, run_checks
from harden.attacks.evaluate import DRAW_SEED, AttackRun, Evaluation, evaluate_robustness
from harden.attacks.threat import format_eps
from harden.data import SegmentationDataset, collate_pad
from harden.ram import fixed_rad_seed

UNTARGETED = ("fgsm", "bim")
TARGETED = ("fgsm-ll", "bim-ll")
MARGIN = 0.02  # IoU-ratio difference below which two models count as equally robust


@dataclass
class CRFStudyResult:
    rows: list[dict[str, Any]]  # per attack and ε: IoU ratios of the three settings
    clean: dict[str, dict[str, float]]  # "no CRF" / "CRF" → miou, pixel_accuracy, confidence, entropy
    checks: list[Check]  # sanity checks of the CRF model's evaluation

    def observations(self) -> list[dict[str, Any]]:
        untargeted = [r for r in self.rows if r["attack"] in UNTARGETED]
        targeted = [r for r in self.rows if r["attack"] not in UNTARGETED]
        found = [{
            "claim": "mean field makes the predictions more confident (§7.1)",
            "holds": self.clean["CRF"]["confidence"] > self.clean["no CRF"]["confidence"],
            "evidence": f"mean max-probability {self.clean['no CRF']['confidence']:.3f} → "
            f"{self.clean['CRF']['confidence']:.3f}, entropy {self.clean['no CRF']['entropy']:.3f} → "
            f"{self.clean['CRF']['entropy']:.3f} nats",
        }]  # fmt: skip
        if untargeted:
            found.append(_compare(untargeted, "crf", "no_crf", "the CRF resists untargeted attacks (§7.1)", above=True))
            found.append(_compare(untargeted, "crf", "crf_from_unaries",
                                  "untargeted attacks crafted on the unaries beat the white-box attack on the CRF "
                                  "(§7.2, gradient masking)", above=True))  # fmt: skip
        if targeted:
            found.append(_compare(targeted, "crf", "no_crf", "the CRF does not resist targeted attacks (§7.2)",
                                  above=False))  # fmt: skip
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "clean": self.clean,
            "checks": [c.to_dict() for c in self.checks],
            "observations": self.observations(),
        }


def _compare(rows: list[dict[str, Any]], first: str, second: str, claim: str, *, above: bool) -> dict[str, Any]:
    """`above`: the claim holds when `first`'s IoU ratio exceeds `second`'s by MARGIN in every row;
    otherwise when it never does."""
    gaps = [r[first] - r[second] for r in rows]
    holds = all(g > MARGIN for g in gaps) if above else all(g <= MARGIN for g in gaps)
    detail = ", ".join(f"{r['attack']}@{r['eps_text']} {r[first]:.3f} vs {r[second]:.3f}" for r in rows)
    return {"claim": claim, "holds": holds, "evidence": f"IoU ratio {first} vs {second}: {detail}"}


def crf_study(
    without_crf: nn.Module,
    with_crf: nn.Module,
    dataset: SegmentationDataset,
    *,
    attacks: tuple[str, ...] = UNTARGETED + TARGETED,
    eps_values: tuple[float, ...] = (4 / 255, 8 / 255),
    steps: int | None = None,
    eot: int = 1,
    draws: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> CRFStudyResult:
    """Attack `without_crf` and `with_crf` (the same network with a CRF appended) alike; on the CRF
    model, also with perturbations crafted on `without_crf` (its unaries)."""
    common: dict[str, Any] = {
        "steps": steps, "eot": eot, "allow_random": False, "seed": seed, "draws": draws,
        "batch_size": batch_size, "device": device, "examples": 0, "progress": progress,
    }  # fmt: skip
    plain = evaluate_robustness(without_crf, dataset, list(attacks), list(eps_values), **common)
    crf = evaluate_robustness(
        with_crf, dataset, list(attacks), list(eps_values), surrogates={"unaries": without_crf}, **common
    )
    images, labels = collate_pad([dataset[i] for i in range(min(4, len(dataset)))])
    checks = run_checks(crf, with_crf, images.to(device), labels.to(device), eot=eot)
    rows = []
    for attack in attacks:
        for eps in eps_values:
            rows.append({
                "attack": attack, "eps": eps, "eps_text": format_eps(eps),
                "kind": "untargeted" if attack in UNTARGETED else "targeted",
                "no_crf": _ratio(plain, _run(plain, attack, eps, "")),
                "crf": _ratio(crf, _run(crf, attack, eps, "")),
                "crf_from_unaries": _ratio(crf, _run(crf, attack, eps, "unaries")),
            })  # fmt: skip
    clean = {
        "no CRF": _clean(plain, without_crf, dataset, batch_size, device),
        "CRF": _clean(crf, with_crf, dataset, batch_size, device),
    }
    return CRFStudyResult(rows, clean, checks)


def _run(evaluation: Evaluation, attack: str, eps: float, crafted_on: str) -> AttackRun:
    return next(r for r in evaluation.runs if (r.attack, r.eps, r.crafted_on) == (attack, eps, crafted_on))


def _ratio(evaluation: Evaluation, run: AttackRun) -> float:
    clean_miou = evaluation.clean_scores()[0]
    return run.worst().miou / clean_miou if clean_miou > 0 else float("nan")


def _clean(
    evaluation: Evaluation, model: nn.Module, dataset: SegmentationDataset, batch_size: int, device: Any
) -> dict[str, float]:
    """Clean mIoU and pAcc, and the mean max-probability and entropy per pixel (§7.1)."""
    miou, accuracy = evaluation.clean_scores()
    confidence = entropy = pixels = 0.0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pad)
    with torch.no_grad(), fixed_rad_seed(model, DRAW_SEED):
        for images, _ in loader:
            probabilities = torch.softmax(model(images.to(device)).double(), dim=1)  # (B, K, H, W)
            confidence += float(probabilities.amax(1).sum())
            entropy -= float((probabilities * probabilities.clamp_min(1e-300).log()).sum())
            pixels += probabilities[:, 0].numel()
    return {"miou": miou, "pixel_accuracy": accuracy, "confidence": confidence / pixels, "entropy": entropy / pixels}


def format_table(result: CRFStudyResult) -> str:
    lines = [f"{'':<10} {'mIoU':>7} {'pAcc':>7} {'max-prob':>9} {'entropy':>8}"]
    for name, c in result.clean.items():
        scores = f"{c['miou']:>7.4f} {c['pixel_accuracy']:>7.4f} {c['confidence']:>9.4f} {c['entropy']:>8.4f}"
        lines.append(f"{name:<10} {scores}")
    lines += ["", "IoU ratio (adversarial / clean mIoU; lower = attack hurt more):"]
    lines.append(f"{'attack':<10} {'kind':<11} {'ε':>7} {'no CRF':>8} {'CRF':>8} {'CRF←unaries':>12}")
    for r in result.rows:
        lines.append(
            f"{r['attack']:<10} {r['kind']:<11} {r['eps_text']:>7} {r['no_crf']:>8.3f} {r['crf']:>8.3f} "
            f"{r['crf_from_unaries']:>12.3f}"
        )
    lines += ["", "sanity checks of the CRF model's evaluation (unaries as a surrogate):"]
    for check in result.checks:
        lines.append(f"  [{check.status:>4}] {check.name:<17} {check.detail}")
    lines += ["", "observations of Arnab et al. §7, here:"]
    for o in result.observations():
        lines.append(f"  [{'holds' if o['holds'] else 'does not hold':>13}] {o['claim']} — {o['evidence']}")
    return "\n".join(lines)


def plot_study(result: CRFStudyResult, path: Any) -> None:
    """IoU ratio against ε per attack: no CRF, CRF (white-box) and CRF attacked from its unaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harden._io import atomic_path

    attacks = list(dict.fromkeys(r["attack"] for r in result.rows))
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.6 * len(attacks), 3.4), squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks, strict=True):
        rows = sorted((r for r in result.rows if r["attack"] == attack), key=lambda r: r["eps"])
        eps = [0.0] + [255 * r["eps"] for r in rows]
        for key, label in (("no_crf", "no CRF"), ("crf", "CRF (white-box)"), ("crf_from_unaries", "CRF ← unaries")):
            ax.plot(eps, [1.0] + [r[key] for r in rows], marker="o", label=label)
        ax.set_title(f"{attack} ({rows[0]['kind']})")
        ax.set_xlabel("ε (grey levels of 255)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("IoU ratio")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
