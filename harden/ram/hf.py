"""RAM for HuggingFace transformers attention (optional extra `hf`).

transformers ≥ 5 routes every attention layer's core computation through its documented
extension point, `AttentionInterface`: the layer projects q, k, v itself and calls the function
registered under `config._attn_implementation`. RAM registers one function ("harden_ram") and
points each converted layer at it through a private copy of its config; the layer keeps its
weights and its projections, and gains a `harden_ram` child (a `RobustAttentionCore`). With an
identity RAM configuration the function calls the layer's original implementation.

Recognised: SegFormer's efficient (spatial-reduction) attention and ViT self-attention. Other
HF attention classes are reported as unrecognised by `insert_ram_`. transformers is imported
only when such a layer is converted, so `harden` does not need it otherwise.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn

from harden.ram._adapters import register_attention_adapter
from harden.ram.config import RAMConfig
from harden.ram.masks import split_additive_mask
from harden.ram.robust_attention import RadSeeds, RobustAttentionCore

IMPLEMENTATION = "harden_ram"
RECOGNISED = {
    ("transformers.models.segformer.modeling_segformer", "SegformerAttention"),
    ("transformers.models.vit.modeling_vit", "ViTAttention"),
}


def _is_hf_attention(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__module__, cls.__name__) in RECOGNISED and not hasattr(module, "harden_ram")


def ram_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The `AttentionInterface` function: q, k, v (B, heads, N, d) → (out (B, N, heads, d), attention)."""
    core = module.get_submodule("harden_ram")
    assert isinstance(core, RobustAttentionCore)
    if core.takes_fused_path:
        original = _original_implementation(module)
        return original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    bias, keep = split_additive_mask(attention_mask)
    out, applied = core.forward_with_attention(query, key, value, bias, keep)
    return out.transpose(1, 2).contiguous(), applied


def _original_implementation(module: nn.Module) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    layer: Any = module
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(layer.harden_ram_original, eager)


@register_attention_adapter("transformers SegFormer/ViT attention", _is_hf_attention)
def _convert_hf(module: nn.Module, config: RAMConfig, seeds: RadSeeds) -> nn.Module | str:
    from transformers import AttentionInterface

    layer: Any = module  # a transformers class; its attributes are not typed here
    if not (hasattr(layer, "config") and hasattr(layer, "scaling")):
        return "this transformers version's attention layout is not recognised (needs transformers ≥ 5)"
    if IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, ram_attention)
    layer.harden_ram = RobustAttentionCore(float(layer.scaling), config, seeds)
    layer.harden_ram_original = layer.config._attn_implementation or "eager"
    layer.config = copy.copy(layer.config)  # this layer only; the model's config is untouched
    layer.config._attn_implementation = IMPLEMENTATION
    return module
