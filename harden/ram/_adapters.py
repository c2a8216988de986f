"""The registry of attention adapters: how `insert_ram_` recognises and converts a layer.

An adapter says which modules it recognises (`matches`) and converts one (`convert`), returning
the module to put in its place (possibly the same one, changed in place) or, when it recognises
the layer but cannot convert this configuration of it, the reason as a string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from harden.ram.config import RAMConfig
from harden.ram.robust_attention import RadSeeds

Convert = Callable[[nn.Module, RAMConfig, RadSeeds], "nn.Module | str"]


@dataclass(frozen=True)
class AttentionAdapter:
    kind: str
    matches: Callable[[nn.Module], bool]
    convert: Convert


ADAPTERS: dict[str, AttentionAdapter] = {}


def register_attention_adapter(kind: str, matches: Callable[[nn.Module], bool]) -> Callable[[Convert], Convert]:
    """Decorator: `@register_attention_adapter("torch MultiheadAttention", lambda m: ...)` on a converter."""

    def decorate(convert: Convert) -> Convert:
        if kind in ADAPTERS:
            raise ValueError(f"attention adapter {kind!r} is registered twice")
        ADAPTERS[kind] = AttentionAdapter(kind, matches, convert)
        return convert

    return decorate


def find_adapter(module: nn.Module) -> AttentionAdapter | None:
    for adapter in ADAPTERS.values():
        if adapter.matches(module):
            return adapter
    return None
