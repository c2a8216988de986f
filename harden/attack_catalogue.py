"""One-line summaries of the attacks, kept apart from their code so `harden attack --help` lists
them without importing torch. The registries (`harden.attacks._registry`)
take their summaries from here and refuse an attack that has none.
"""

from typing import Final

from harden.errors import InputError

ATTACK_SUMMARIES: Final = {
    "fgsm": "FGSM: one signed-gradient step of ε on CE (Goodfellow et al.)",
    "fgsm-ll": "FGSM II: one step towards each pixel's least likely class (Kurakin et al.)",
    "bim": "I-FGSM/BIM: iterative FGSM from the clean image, α = 1.25ε/steps",
    "bim-ll": "Iterative FGSM II: BIM towards the least likely class",
    "bim-l2": "BIM in the L2 ball of radius ε (per image), 10 steps by default (DDC-AT §6)",
    "pgd": "PGD: random start, α = 2.5ε/steps, CE (Madry et al.)",
    "segpgd": "SegPGD: PGD on CE balanced between correct and wrong pixels (Gu et al.)",
    "cospgd": "CosPGD: PGD on CE weighted by cos(σ(z), e_y) (Agnihotri & Keuper)",
    "apgd-ce": "APGD on the ce loss, 100 iterations (SEA paper §3.1)",
    "apgd-balce": "APGD on the bal-ce loss, 100 iterations (SEA paper §3.1)",
    "apgd-cossim": "APGD on the cossim-ce loss, 100 iterations (SEA paper §3.1)",
    "apgd-maskce": "APGD on the mask-ce loss, 100 iterations (SEA paper §3.1)",
    "apgd-jsd": "APGD on the jsd loss, 100 iterations (SEA paper §3.1)",
    "apgd-masksph": "APGD on the mask-sph loss, 100 iterations (SEA paper §3.1)",
    "apgd-maskce-bal": "APGD on mask-CE with every class of the image weighted equally, 100 iterations (Croce et al.)",
    "padam-ce": "Projected Adam on CE, lr 2/255, 200 iterations, step-size-free (Halmosi et al., ECCV 2024)",
    "padam-cos": "Projected Adam on the logits' cosine distance to the label, 200 iterations (Halmosi et al.)",
    "sea": "SEA: red-ε APGD with Mask-CE, Bal-CE, JS, Mask-Sph; worst case per image (300 it. each)",
    "strongest": "adaptive ensemble: APGD on both SEA protocols' losses (red-ε and full ε) and PAdam-Cos, each "
    "member from the worst image so far, only on images with a pixel still right (100 it. each)",
    "rppgd": "RP-PGD: True/Boundary/False region weights + prototype loss, β = 0.75",
    "dag": "DAG: dense adversary generation towards random wrong labels, projected (Xie et al.)",
    "dag-targeted": "DAG towards each pixel's least likely class",
    "square": "Square attack: score-based random search, outputs only, 300 queries",
    "noise": "Random ±ε signs: the floor every attack must beat",
}

PATCH_SUMMARIES: Final = {
    "pgd": "log-probability of the target (A1), γ 0.005",
    "dag": "Dense Adversary Generation: z_target − z_true on still-correct pixels (A2–A3)",
    "ipatch": "KL to the one-hot target (A4–A5); targeted only",
    "ssap": "η-weighted target log-probability (A6–A8); targeted only",
    "maxvar-dag": "dag + α · attention variance (A16), adaptive to MAS",
    "maxattn-dag": "dag + α · attention mass on the patch (A17), adaptive to MAS",
    "attention-fool": "target log-probability + α · L_kq, the query-key logits to the patch (A13–A15)",
    "patch-fool": "target log-probability + α · per-layer attention on the patch, β-projected (A9–A12)",
    "eot": "dag averaged over 8 RAD draws per step (adaptive to RAD)",
    "autoattack": "APGD-CE and Square inside the patch, worst per image (A.8)",
}


def check_attack_names(names: tuple[str, ...]) -> list[str]:
    """The names, if every one is a registered L∞ attack; InputError (exit 2) naming the choices."""
    unknown = [n for n in names if n not in ATTACK_SUMMARIES]
    if unknown:
        raise InputError(f"unknown attack {', '.join(unknown)}; choose from {', '.join(ATTACK_SUMMARIES)}")
    return list(names)
