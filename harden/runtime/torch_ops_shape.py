"""ONNX's shape and indexing operators for the graph twin: Shape, Reshape, Transpose, Squeeze,
Concat, Split, Slice, Gather, Expand, Tile, Pad, Range, Constant and their kin (opset 18
semantics, as `harden.runtime.torch_ops` describes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harden.runtime.op_table import Attributes, NodeInputs, Value, _ints, _t, op, optional

# -- shapes and indexing ------------------------------------------------------------------------


@op("Shape")
def _shape(x: list[Value], a: Attributes) -> torch.Tensor:
    shape = list(_t(x[0]).shape)
    start, end = a.get("start", 0), a.get("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.int64)


@op("Size")
def _size(x: list[Value], a: Attributes) -> torch.Tensor:
    return torch.tensor(_t(x[0]).numel(), dtype=torch.int64)


@op("Reshape")
def _reshape(x: list[Value], a: Attributes) -> torch.Tensor:
    data, shape = _t(x[0]), _ints(x[1])
    if not a.get("allowzero", 0):  # 0 copies the input's dimension
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(shape)


@op("Flatten")
def _flatten(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    axis = a.get("axis", 1) % (data.dim() or 1)
    return data.reshape(math.prod(data.shape[:axis]), -1)


@op("Transpose")
def _transpose(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    return data.permute(a.get("perm", list(reversed(range(data.dim())))))


@op("Squeeze")
def _squeeze(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    given = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")  # an attribute before opset 13
    if not given:
        return data.squeeze()
    axes = sorted({ax % data.dim() for ax in given}, reverse=True)
    for ax in axes:
        data = data.squeeze(ax)
    return data


@op("Unsqueeze")
def _unsqueeze(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    given = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a["axes"])  # an attribute before opset 13
    rank = data.dim() + len(given)
    for ax in sorted(ax % rank for ax in given):
        data = data.unsqueeze(ax)
    return data


@op("Concat")
def _concat(x: list[Value], a: Attributes) -> torch.Tensor:
    tensors = [_t(v) for v in x]
    dtype = tensors[0].dtype
    return torch.cat([t.to(dtype) for t in tensors], dim=a["axis"])


@op("Split", outputs=1 << 16)
def _split(x: list[Value], a: Attributes) -> Sequence[torch.Tensor]:
    data, axis = _t(x[0]), a.get("axis", 0)
    if len(x) > 1 and x[1] is not None:
        return data.split(_ints(x[1]), dim=axis)
    if "split" in a:  # an attribute before opset 13
        return data.split(list(a["split"]), dim=axis)
    parts = a["num_outputs"]
    return data.split(math.ceil(data.shape[axis] / parts), dim=axis)


@op("Slice")
def _slice(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = data.shape[axis]
        # ONNX clamps start/end into range; with a negative step the range runs downwards
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index = torch.arange(start, end, step, device=data.device)
        data = data.index_select(axis % data.dim(), index)
    return data


@op("Gather")
def _gather(x: list[Value], a: Attributes) -> torch.Tensor:
    data, indices = _t(x[0]), _t(x[1]).long()
    axis = a.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = data.index_select(axis, indices.flatten())
    # a 0-d index (Shape → Gather in every dynamic export) drops the axis: the shape is a tuple, maybe empty
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


@op("GatherND")
def _gather_nd(x: list[Value], a: Attributes) -> torch.Tensor:
    data, indices = _t(x[0]), _t(x[1]).long()
    batch = int(a.get("batch_dims", 0))
    if batch:  # the leading batch_dims axes pair data and indices one to one
        shape = data.shape[:batch]
        flat_data, flat_indices = data.reshape(-1, *data.shape[batch:]), indices.reshape(-1, *indices.shape[batch:])
        parts = [_gather_nd_plain(d, i) for d, i in zip(flat_data, flat_indices, strict=True)]
        return torch.stack(parts).reshape(*shape, *parts[0].shape)
    return _gather_nd_plain(data, indices)


def _gather_nd_plain(data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    depth = indices.shape[-1]
    coords = [torch.where(indices[..., i] < 0, indices[..., i] + data.shape[i], indices[..., i]) for i in range(depth)]
    return data[tuple(coords)]


@op("Expand")
def _expand(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    return data.expand(torch.broadcast_shapes(data.shape, tuple(_ints(x[1]))))


@op("Tile")
def _tile(x: list[Value], a: Attributes) -> torch.Tensor:
    return _t(x[0]).repeat(_ints(x[1]))


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _refuse_pad(a: Attributes, x: NodeInputs) -> str | None:
    mode = a.get("mode", "constant")
    return None if mode in PAD_MODES else f"attribute mode={mode} is not an ONNX Pad mode"


@op("Pad", since=11, refuse=_refuse_pad)
def _pad(x: list[Value], a: Attributes) -> torch.Tensor:
    data = _t(x[0])
    value = optional(x, 2)
    axes = _ints(x[3]) if optional(x, 3) is not None else list(range(data.dim()))
    return padded(
        data, _ints(x[1]), axes, a.get("mode", "constant"), value.item() if value is not None and value.numel() else 0
    )


@op("Pad", until=10, refuse=_refuse_pad)
def _pad_2(x: list[Value], a: Attributes) -> torch.Tensor:  # pads and value were attributes before opset 11
    data = _t(x[0])
    return padded(data, list(a["pads"]), list(range(data.dim())), a.get("mode", "constant"), a.get("value", 0.0))


def padded(data: torch.Tensor, pads: list[int], axes: list[int], mode: str, value: float | int | bool) -> torch.Tensor:
    """ONNX Pad: pads [begins…, ends…] on `axes` (negative ones crop)."""
    rank = data.dim()
    pairs = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        pairs[axis % rank] = (pads[i], pads[len(axes) + i])
    if mode == "constant":
        explicit: list[int] = []
        for begin, end in reversed(pairs):
            explicit += [begin, end]
        return F.pad(data, explicit, value=value)
    for axis, (begin, end) in enumerate(pairs):  # reflect, edge, wrap: gather the source cells per axis
        if begin or end:
            size = data.shape[axis]
            where = np.arange(-begin, size + end)
            if mode == "edge":
                where = np.clip(where, 0, size - 1)
            elif mode == "wrap":
                where = where % size
            else:  # reflect: mirror without repeating the edge
                period = 2 * (size - 1) if size > 1 else 1
                where = np.abs(where) % period
                where = np.where(where >= size, period - where, where)
            data = data.index_select(axis, torch.from_numpy(where).to(data.device))
    return data


@op("Range")
def _range(x: list[Value], a: Attributes) -> torch.Tensor:
    start, limit, delta = (_t(v) for v in x[:3])
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@op("ConstantOfShape")
def _constant_of_shape(x: list[Value], a: Attributes) -> torch.Tensor:
    value = a.get("value", torch.zeros(1))
    return torch.full(_ints(x[0]), value.flatten()[0].item(), dtype=value.dtype)


@op("Constant")
def _constant(x: list[Value], a: Attributes) -> torch.Tensor:
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):  # fmt: skip
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise NotImplementedError(f"Constant with attributes {sorted(a)}")
