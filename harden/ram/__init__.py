"""The Robust Attention Mechanism (RAM paper §4; docs/design.md §3): MAS and RAD in attention layers.

- `ops`: `harden::mas` and `harden::rad` custom ops.
- `counter_rng`: the specification of RAD's counter-based generator, with test vectors.
- `robust_attention`: `RobustAttentionCore` and RAD's per-forward seeding.
- `insert`: `insert_ram_(model, RAMConfig(...))` and its report.

Four files compute robust attention; which one runs depends on where:
- `robust_attention` (`RobustAttentionCore`): every attention layer's core. On CPU, or whenever
  something needs the N×N matrices (hooks, bias/mask, learnable gain, attention maps), it runs
  the explicit path: logits → `harden::mas` → `harden::rad` → ·V.
- `fused_attention` (`harden::robust_attention`): the whole call as one op, taken on CUDA tensors
  when nothing needs the matrices; on a GPU with Triton it dispatches to the next file,
  elsewhere it composes `harden::mas` and `harden::rad`.
- `triton_attention`: the fused flash-attention-style Triton launchers (training and attacks on
  a GPU; no N×N matrix in memory, forward or backward).
- `_triton_attention_kernels`: the @triton.jit kernels those launchers call (a module of its own
  because it imports triton at the top, and triton is optional).
`harden.export.triton_kernels` is different: the element-wise MAS and RAD kernels of the
exported graph's custom ops, which the TensorRT plugins run. All of them draw RAD's masks from
`counter_rng`, so every path gives the same mask for the same seed and counter.
"""

from harden.ram.config import RAMConfig
from harden.ram.insert import RAMReport, insert_ram_
from harden.ram.robust_attention import (
    RadSeeds,
    RobustAttentionCore,
    fixed_rad_seed,
    has_rad,
    robust_cores,
    seeded_modules,
    set_rad_seed,
)

__all__ = [
    "RAMConfig",
    "RAMReport",
    "RadSeeds",
    "RobustAttentionCore",
    "fixed_rad_seed",
    "has_rad",
    "insert_ram_",
    "robust_cores",
    "seeded_modules",
    "set_rad_seed",
]
