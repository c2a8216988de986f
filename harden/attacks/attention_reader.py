"""Reading a model's attention during a forward pass, for the attention-aware patch attacks.

`AttentionReader` records the attention of every layer whose keys form a grid over the image
(global attention: SegFormer, ViT, non-local; Swin's windows are skipped) through
`AttentionCore`'s hooks. The recorded tensors are part of the autograd graph, so the attacks
build their objectives from them (RAM paper A10, A13–A14, A16–A17).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from harden.errors import InputError
from harden.models.attention import AttentionCore, AttentionTrace, find_attention


class AttentionReader:
    """Context manager: `with AttentionReader(model, enabled) as reader: model(x)`; then read.
    Disabled, it registers nothing (attacks that ignore attention pay nothing)."""

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model, self.enabled = model, enabled
        self.traces: list[tuple[AttentionTrace, tuple[int, int]]] = []
        self.image_size: tuple[int, int, int] = (0, 0, 0)
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> AttentionReader:
        if self.enabled:
            self.handles = [core.register_attention_hook(self._record) for _, core in find_attention(self.model)]
            self.handles.append(self.model.register_forward_pre_hook(self._size))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _size(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        batch, _, height, width = args[0].shape
        self.image_size = (batch, height, width)

    def _record(self, core: AttentionCore, trace: AttentionTrace) -> None:
        batch, height, width = self.image_size
        grid = key_grid(trace.attention.shape[-1], height, width)
        if grid is not None and trace.attention.shape[0] == batch:
            self.traces.append((trace, grid))

    def _read(self) -> list[tuple[AttentionTrace, tuple[int, int]]]:
        if not self.traces:
            raise InputError(
                "no attention layer of this model attends over the whole image (keys on a grid of the image), "
                "so attention-aware patch attacks have nothing to read; use dag, ipatch or eot"
            )
        return self.traces

    def variance(self) -> torch.Tensor:
        """A16: mean over layers of the variance of the attention matrix (per row, over keys)."""
        return torch.stack([trace.attention.var(-1).mean() for trace, _ in self._read()]).mean()

    def patch_mass_per_layer(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """A10 / A17 per layer: attention every query puts on keys under the patch, averaged
        over queries and heads (a key counts by the share of its cell the patch covers)."""
        masses = []
        for trace, grid in self._read():
            cover = F.adaptive_avg_pool2d(mask, grid).flatten(1)  # (B, Nk)
            masses.append((trace.attention * cover[:, None, None, :]).sum(-1).mean())
        return masses

    def patch_mass(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.patch_mass_per_layer(mask)).mean()

    def key_query_logsumexp(self, mask: torch.Tensor) -> torch.Tensor:
        """A13–A14: L_kq^{hl} = mean over queries of the logit towards the patch keys; then
        log Σ_l exp(log Σ_h exp(L_kq^{hl}))."""
        per_layer = []
        for trace, grid in self._read():
            cover = F.adaptive_avg_pool2d(mask, grid).flatten(1)  # (B, Nk)
            weight = cover / cover.sum(1, keepdim=True).clamp_min(1e-12)
            to_patch = (trace.logits * weight[:, None, None, :]).sum(-1).mean(-1)  # (B, heads)
            per_layer.append(torch.logsumexp(to_patch, dim=1))  # (B,)
        return torch.logsumexp(torch.stack(per_layer, 1), dim=1).mean()


def key_grid(keys: int, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) with h·w = keys and h/w the image's aspect ratio, or None (tokens that are not a
    grid over the whole image: windows, class tokens)."""
    if keys < 1:
        return None
    rows = round(math.sqrt(keys * height / width))
    if rows < 1 or keys % rows:
        return None
    cols = keys // rows
    return (rows, cols) if abs(rows / cols - height / width) <= 0.1 * height / width else None
