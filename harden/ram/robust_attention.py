"""`RobustAttentionCore`: the attention core with RAM (MAS, RAD) and the §5.1 comparisons.

One core per attention layer; the cores that one `insert_ram_` call creates share a `RadSeeds`,
which gives every forward pass one seed and every RAD call in it its own counter value, so that
all RAD calls of a pass draw distinct masks, a fixed seed reproduces the whole pass, and
without one every pass draws afresh (from torch's global generator, so `torch.manual_seed`
makes training with RAD reproducible).

On CUDA tensors a core runs as one fused kernel (`harden::robust_attention`, Triton) whenever
nothing needs its N×N matrices; everywhere else it takes the explicit logits → MAS → RAD → ·V
path. Both draw the same RAD masks for the same seed and counter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, cast

import torch
from torch import nn

from harden.models.attention import AttentionCore
from harden.ram import ops  # noqa: F401  (registers torch.ops.harden.*)
from harden.ram.config import RAMConfig
from harden.ram.counter_rng import MAX_COUNTER
from harden.ram.fused_attention import runs_triton

Seed = int | torch.Tensor


class RadSeeds:
    """The seed of the current forward pass and the number of RAD calls made in it."""

    def __init__(self) -> None:
        self.fixed: Seed | None = None  # None: a fresh seed per forward pass
        self._seed: torch.Tensor | None = None
        self._calls = 0

    def start_forward(self) -> torch.Tensor:
        """Begin a forward pass; returns its seed (0-d int64)."""
        self._calls = 0
        seed = self.fixed
        if seed is None:  # fresh, but reproducible under torch.manual_seed
            seed = torch.randint(-(2**62), 2**62, (), dtype=torch.int64)
        self._seed = torch.as_tensor(seed, dtype=torch.int64)
        return self._seed

    def next_call(self) -> tuple[torch.Tensor, int]:
        """(seed, counter) for the next RAD call of this forward pass."""
        if self._seed is None:
            self.start_forward()
        assert self._seed is not None
        counter = self._calls
        self._calls = (self._calls + 1) % MAX_COUNTER
        return self._seed, counter


class StartForward:
    """Forward pre-hook on the model RAM was inserted into: a new pass, a new seed.

    A class rather than a closure so that `copy.deepcopy(model)` gives the copy its own seeds.
    """

    def __init__(self, seeds: RadSeeds) -> None:
        self.seeds = seeds

    def __call__(self, module: nn.Module, args: object) -> None:
        self.seeds.start_forward()


class RobustAttentionCore(AttentionCore):
    """An `AttentionCore` computing RAM: logits → (temperature, gain) → MAS or softmax → RAD.

    Args:
        scale: logit scale; None means 1/sqrt(head dim).
        config: which parts are on.
        seeds: shared per model; see `RadSeeds`.
    """

    def __init__(self, scale: float | None, config: RAMConfig, seeds: RadSeeds) -> None:
        super().__init__(scale)
        self.config = config
        self.seeds = seeds
        self.logit_gain = nn.Parameter(torch.ones(())) if config.learnable else None

    @property
    def drops(self) -> bool:
        """Whether RAD is on and drops anything (p > 0)."""
        return self.config.rad and self.config.drop_p > 0

    @property
    def uses_fused_kernel(self) -> bool:
        return self.config.is_identity

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.takes_fused_ram_path(q, bias, mask):
            return self._fused_ram(q, k, v)
        return super().forward(q, k, v, bias, mask)

    def takes_fused_ram_path(self, q: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None) -> bool:
        """Whether this call may run as one `harden::robust_attention` (fused kernels on a GPU).

        Only on CUDA, and only when nothing needs the N×N matrices: no hooks, no bias or mask (the
        kernels take neither), no learnable gain (its gradient needs the logits), and not while
        exporting to ONNX (the graph keeps MatMul → harden::Mas → harden::Rad → MatMul).
        """
        return (
            q.is_cuda
            and not self.config.is_identity
            and not self._hooks
            and bias is None
            and mask is None
            and self.logit_gain is None
            and not torch.onnx.is_in_onnx_export()
            and runs_triton(q.device)
        )

    def _fused_ram(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        if self.config.temperature is not None:
            scale /= self.config.temperature
        threshold = self.config.threshold if self.config.mas else None
        if self.drops:
            seed, counter = self.seeds.next_call()
            p = self.config.drop_p
        else:
            seed, counter, p = torch.zeros((), dtype=torch.int64), 0, 0.0
        out, _ = torch.ops.harden.robust_attention(q, k, v, scale, threshold, seed, counter, p)
        return out

    def logits(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().logits(q, k, bias)
        if self.config.temperature is not None:
            logits = logits / self.config.temperature
        if self.logit_gain is not None:
            logits = logits * self.logit_gain
        return logits

    def normalise(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.config.mas:
            return super().normalise(logits, mask)
        return torch.ops.harden.mas(logits, self.config.threshold, mask)

    def drop(self, attention: torch.Tensor) -> torch.Tensor:
        if not self.drops:
            return attention
        seed, counter = self.seeds.next_call()
        return torch.ops.harden.rad(attention, seed, counter, self.config.drop_p)

    def extra_repr(self) -> str:
        return self.config.describe()


def robust_cores(model: nn.Module) -> list[tuple[str, RobustAttentionCore]]:
    """All RAM cores of a model (own models, wrapped `nn.MultiheadAttention`, HF layers)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RobustAttentionCore)]


class Seeded(Protocol):
    """What `seeded_modules` finds: a module drawing RAD masks from `seeds`."""

    seeds: RadSeeds

    @property
    def drops(self) -> bool: ...


def seeded_modules(model: nn.Module) -> list[Seeded]:
    """Every module that draws RAD masks from a `RadSeeds`: the RAM cores, and modules that run
    a deployed graph with a `rad_seed` input (runtime's graph twin and engine wrapper). Each has
    `seeds: RadSeeds` and `drops: bool`; the seed functions below act on all of them."""
    return [cast(Seeded, m) for m in model.modules() if isinstance(getattr(m, "seeds", None), RadSeeds)]


def has_rad(model: nn.Module) -> bool:
    """Whether any part of `model` drops with RAD (so its output depends on a seed)."""
    return any(m.drops for m in seeded_modules(model))


def set_rad_seed(model: nn.Module, seed: Seed | None) -> None:
    """Fix RAD's seed for every following forward pass (None: a fresh seed per pass again).

    A 0-d int64 tensor works as well as an int: it is how an exported graph takes `rad_seed`
    as an input.
    """
    for module in seeded_modules(model):
        module.seeds.fixed = seed


@contextlib.contextmanager
def fixed_rad_seed(model: nn.Module, seed: Seed) -> Iterator[None]:
    """`with fixed_rad_seed(model, 7): ...`: reproducible RAD draws inside the block."""
    modules = seeded_modules(model)
    previous = [m.seeds.fixed for m in modules]
    set_rad_seed(model, seed)
    try:
        yield
    finally:
        for module, old in zip(modules, previous, strict=True):
            module.seeds.fixed = old
