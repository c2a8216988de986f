"""RAM for `torch.nn.MultiheadAttention`: a subclass that runs its attention through RAM.

The converted layer adopts the original's parameters (the same tensors), stays an
`nn.MultiheadAttention` for code that checks, and with an identity RAM configuration calls the
original implementation unchanged. Under RAM, MHA's own training-time attention dropout is not
applied: RAD takes its place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harden.models.attention import merge_heads, split_heads
from harden.ram._adapters import register_attention_adapter
from harden.ram.config import RAMConfig
from harden.ram.masks import add_bias, combine_keep, split_additive_mask
from harden.ram.robust_attention import RadSeeds, RobustAttentionCore


class RobustMultiheadAttention(nn.MultiheadAttention):
    core: RobustAttentionCore

    @classmethod
    def adopt(cls, mha: nn.MultiheadAttention, config: RAMConfig, seeds: RadSeeds) -> RobustMultiheadAttention:
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device="meta",  # every parameter is replaced by the original's below
        )
        for name, param in mha.named_parameters(recurse=False):
            setattr(new, name, param)
        new.out_proj = mha.out_proj
        new.core = RobustAttentionCore(None, config, seeds)
        return new.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.core.takes_fused_path:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) → (1, L, E)
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) → (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = split_heads(F.linear(query, w_q, b_q), self.num_heads)  # (B, heads, L, d)
        k = split_heads(F.linear(key, w_k, b_k), self.num_heads)  # (B, heads, S, d)
        v = split_heads(F.linear(value, w_v, b_v), self.num_heads)
        bias, keep = self._masks(attn_mask, key_padding_mask, is_causal, q.shape[0], q.shape[2], k.shape[2])
        out, applied = self.core.forward_with_attention(q, k, v, bias, keep)  # (B, heads, L, d), (B, heads, L, S)
        out = self.out_proj(merge_heads(out))  # (B, L, E)
        weights = (applied.mean(dim=1) if average_attn_weights else applied) if need_weights else None
        if unbatched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _masks(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        batch: int,
        length: int,
        source: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """PyTorch's conventions (bool True = may NOT attend) → (bias, keep), (B, heads, L, S)."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool).triu(1)
        bias = keep = None
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (B·heads, L, S)
                attn_mask = attn_mask.view(batch, self.num_heads, length, source)
            bias, keep = split_additive_mask(~attn_mask if attn_mask.dtype == torch.bool else attn_mask)
        if key_padding_mask is not None:
            padding = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
            pad_bias, pad_keep = split_additive_mask(~padding if padding.dtype == torch.bool else padding)
            bias, keep = add_bias(bias, pad_bias), combine_keep(keep, pad_keep)
        return bias, keep


def _is_plain_mha(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) and not isinstance(module, RobustMultiheadAttention)


@register_attention_adapter("torch nn.MultiheadAttention", _is_plain_mha)
def _convert_mha(module: nn.Module, config: RAMConfig, seeds: RadSeeds) -> nn.Module | str:
    assert isinstance(module, nn.MultiheadAttention)
    if module.bias_k is not None or module.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported by RAM's MultiheadAttention"
    return RobustMultiheadAttention.adopt(module, config, seeds)
