"""One table of how closely a deployed file must follow its model, per precision: used when
exporting (parity of PyTorch and ONNX Runtime, `harden.export.parity`) and as the default gates
of verify (engine vs twins on clean images, `harden.runtime.gates`), so the two never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Tolerance:
    """When an export passes: elementwise logits (Polygraphy), argmax agreement, mIoU change.

    Args:
        atol, rtol: Polygraphy's elementwise check on the logits: |a − b| ≤ atol + rtol·|b|.
        min_agreement: smallest fraction of pixels whose argmax must agree.
        max_miou_change: largest |mIoU(ONNX) − mIoU(PyTorch)| against the labels.
    """

    atol: float
    rtol: float
    min_agreement: float
    max_miou_change: float


# fp32 differs from PyTorch only in summation order (~1e-6 on logits of size ~10), so any real
# disagreement is a bug. fp16 has ~3 decimal digits; int8 changes logits visibly and is judged
# by what it does to the segmentation, with loose elementwise bounds that catch a broken graph.
TOLERANCES: Final = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_agreement=0.999, max_miou_change=0.001),
    "fp16": Tolerance(atol=0.1, rtol=0.05, min_agreement=0.99, max_miou_change=0.01),
    "int8": Tolerance(atol=2.0, rtol=0.5, min_agreement=0.9, max_miou_change=0.05),
}

# verify only: adversarial inputs sit near decision boundaries, so agreement there is looser
ADVERSARIAL_AGREEMENT: Final = {"fp32": 0.99, "fp16": 0.97, "int8": 0.85}
