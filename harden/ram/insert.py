"""`insert_ram_`: put RAM into every attention layer of an existing model, in place.

In the style of torchao's `quantize_(model, config, filter_fn)`: the model keeps its weights;
each attention layer an adapter recognises is replaced or converted in place (see
`_adapters.py`; adapters for harden's own models, `nn.MultiheadAttention` and HuggingFace
SegFormer/ViT). Layers that look like attention (class name containing "attention"/"attn") but
that no adapter recognises are listed in the report rather than silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from harden.errors import InputError
from harden.models.attention import AttentionCore
from harden.ram import hf, torch_mha  # noqa: F401  (register their adapters)
from harden.ram._adapters import find_adapter, register_attention_adapter
from harden.ram.config import RAMConfig
from harden.ram.robust_attention import RadSeeds, RobustAttentionCore, StartForward, robust_cores

FilterFn = Callable[[nn.Module, str], bool]
_LOOKS_LIKE_ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)


@register_attention_adapter("harden AttentionCore", lambda m: type(m) is AttentionCore)
def _convert_core(module: nn.Module, config: RAMConfig, seeds: RadSeeds) -> nn.Module | str:
    assert isinstance(module, AttentionCore)
    return RobustAttentionCore(module.scale, config, seeds).train(module.training)


@dataclass
class RAMReport:
    """What `insert_ram_` did: converted layers (name, kind), skipped (name, reason), unrecognised (name, class)."""

    config: RAMConfig
    converted: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unrecognised: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"RAM {self.config.describe()}: {len(self.converted)} attention layers converted, "
            f"{len(self.skipped)} skipped, {len(self.unrecognised)} unrecognised"
        ]
        lines += [f"  converted      {name}  ({kind})" for name, kind in self.converted]
        lines += [f"  skipped        {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  NOT converted  {name}  ({cls}): no RAM adapter for this class" for name, cls in self.unrecognised]
        return "\n".join(lines)


def insert_ram_(model: nn.Module, config: RAMConfig, filter_fn: FilterFn | None = None) -> RAMReport:
    """Convert the attention layers of `model` to RAM, in place; returns what was done.

    Args:
        model: any module; its submodules are searched (not the model itself).
        config: the RAM configuration every converted layer gets.
        filter_fn: `(module, fully_qualified_name) -> bool`; None converts every recognised layer.
    """
    if robust_cores(model):
        raise InputError("this model already has RAM layers; insert RAM into the original model once")
    seeds = RadSeeds()
    report = RAMReport(config)
    handled: list[str] = []
    for name, module in list(model.named_modules()):
        if name == "" or any(_inside(name, done) for done in handled):
            continue
        adapter = find_adapter(module)
        if adapter is None:
            continue
        handled.append(name)
        if filter_fn is not None and not filter_fn(module, name):
            report.skipped.append((name, "excluded by filter_fn"))
            continue
        result = adapter.convert(module, config, seeds)
        if isinstance(result, str):
            report.skipped.append((name, result))
            continue
        if result is not module:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, result)
        report.converted.append((name, adapter.kind))
    for name, module in model.named_modules():
        looks_like = _LOOKS_LIKE_ATTENTION.search(type(module).__name__)
        related = any(_inside(name, done) or _inside(done, name) for done in handled)
        if looks_like and name and not related:
            report.unrecognised.append((name, type(module).__name__))
    if report.converted:
        model.register_forward_pre_hook(StartForward(seeds))
    return report


def _inside(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")
