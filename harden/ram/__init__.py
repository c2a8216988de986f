"""The Robust Attention Mechanism (RAM paper §4; DESIGN.md §3): MAS and RAD in attention layers.

- `ops`: `harden::mas` and `harden::rad` custom ops.
- `counter_rng`: the specification of RAD's counter-based generator, with test vectors.
- `robust_attention`: `RobustAttentionCore` and RAD's per-forward seeding.
- `insert`: `insert_ram_(model, RAMConfig(...))` and its report.
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
