"""Where one query position looks: attention rows mapped back onto the image (RAM paper Fig. 3).

`query_attention` runs one image through a model with hooks on every attention core and, for
each global-attention layer, returns the attention of the token covering the query pixel over
all key tokens, averaged over heads and laid out on the key grid. `ram_comparison` makes the
baseline/RAM pair from one model: the same weights with RAM switched off and on.

A layer's token grid is recovered from its token count and the image size (the model's
stride); windowed (Swin) attention, whose rows are per window, is skipped and named.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harden.models.attention import AttentionHook, AttentionTrace, find_attention
from harden.ram.config import RAMConfig
from harden.ram.insert import insert_ram_
from harden.ram.robust_attention import fixed_rad_seed, robust_cores


@dataclass
class LayerAttention:
    """One layer's attention of the query token: (hk, wk) maps on the key grid, rows sum to ~1."""

    name: str
    attention: np.ndarray  # normalised (post-MAS under RAM), before RAD
    applied: np.ndarray  # after RAD (the same as `attention` without RAD)
    query_cell: tuple[int, int]  # the query token's cell on the QUERY grid
    query_grid: tuple[int, int]


def _grid(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) with h·w = tokens on a stride that tiles an image of height × width."""
    for stride in range(1, max(height, width) + 1):
        h, w = math.ceil(height / stride), math.ceil(width / stride)
        if h * w == tokens:
            return h, w
        if h * w < tokens:
            return None
    return None


def _grids(queries: int, keys: int, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Query and key grids; tokens beyond the grid (e.g. Segmenter's class tokens) follow the patches."""
    for extra in range(min(queries, keys)):
        query_grid = _grid(queries - extra, height, width)
        key_grid = _grid(keys - extra, height, width)
        if query_grid is not None and key_grid is not None:
            return query_grid, key_grid
        if keys != queries:  # extra tokens only in self-attention over patches + tokens
            return None
    return None


def query_attention(
    model: nn.Module, image: torch.Tensor, query: tuple[int, int], rad_seed: int = 0
) -> tuple[list[LayerAttention], list[str]]:
    """(maps of the global-attention layers, names of the layers that could not be drawn).

    Args:
        model: a segmentation model; its attention cores are hooked for one forward pass.
        image: (3, H, W) in [0, 1].
        query: (y, x) pixel of the query.
        rad_seed: the RAD draw shown under `applied`.
    """
    height, width = image.shape[-2:]
    y, x = query
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"query pixel {query} lies outside the {height}×{width} image")
    traces: list[tuple[str, AttentionTrace]] = []

    def recorder(name: str) -> AttentionHook:
        return lambda module, trace: traces.append((name, trace))

    handles = [core.register_attention_hook(recorder(name)) for name, core in find_attention(model)]
    try:
        with torch.no_grad(), fixed_rad_seed(model, rad_seed):
            model(image[None])
    finally:
        for handle in handles:
            handle.remove()
    maps, skipped = [], []
    for name, trace in traces:
        batch, _, queries, keys = trace.attention.shape
        grids = _grids(queries, keys, height, width) if batch == 1 else None
        if grids is None:
            skipped.append(name)
            continue
        query_grid, key_grid = grids
        cell = (y * query_grid[0] // height, x * query_grid[1] // width)
        row = cell[0] * query_grid[1] + cell[1]
        patch_keys = key_grid[0] * key_grid[1]
        pick = [
            t[0, :, row, :patch_keys].mean(0).reshape(key_grid).float().cpu().numpy()
            for t in (trace.attention, trace.applied)
        ]
        maps.append(LayerAttention(name, pick[0], pick[1], cell, query_grid))
    return maps, skipped


def ram_comparison(model: nn.Module, config: RAMConfig) -> tuple[nn.Module, nn.Module]:
    """(baseline, RAM): copies of `model` with RAM switched off and on, same weights.

    A model that already has RAM keeps its settings on the RAM side; a plain model gets `config`.
    """
    if robust_cores(model):
        ram = copy.deepcopy(model)
        baseline = copy.deepcopy(model)
        for _, core in robust_cores(baseline):
            core.config = dataclasses.replace(core.config, mas=False, rad=False)
        return baseline, ram
    ram = copy.deepcopy(model)
    insert_ram_(ram, config)
    return model, ram


def plot_query_attention(
    image: np.ndarray,
    query: tuple[int, int],
    base_maps: list[LayerAttention],
    ram_maps: list[LayerAttention],
    out: Path,
) -> None:
    """Rows per layer: the image with the query, the baseline's attention, RAM's after MAS (one
    colour scale with the baseline), and after RAD for one draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harden._io import atomic_path

    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    rows = len(base_maps)
    fig, axes = plt.subplots(rows, 4, figsize=(4 * 3.2, rows * 3.2 * height / width + 0.6), squeeze=False)
    for row, (base, ram) in enumerate(zip(base_maps, ram_maps, strict=True)):
        panels = [
            ("image, query ×", None),
            (f"baseline (max {base.attention.max():.2f})", base.attention),
            (f"RAM: after MAS (max {ram.attention.max():.2f})", ram.attention),
            ("RAM: after RAD (one draw)", ram.applied),
        ]
        shared = max(base.attention.max(), ram.attention.max())  # one colour scale: baseline vs MAS
        for col, (title, heat) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, extent=extent)
            if heat is not None:
                vmax = shared if col < 3 else None
                ax.imshow(heat, extent=extent, cmap="inferno", alpha=0.65, interpolation="nearest", vmin=0, vmax=vmax)
            ax.plot(query[1], query[0], marker="x", color="cyan", markersize=9, mew=2)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(base.name, fontsize=7)
    fig.suptitle("attention of the query pixel over the image — same weights, RAM off vs on", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
