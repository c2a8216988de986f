"""Where tensors live: `--device cpu|cuda|cuda:N|auto` resolved once, and models placed there.

Under torchrun each process takes its own GPU: a bare `cuda` means `cuda:LOCAL_RANK`. Attack
arithmetic stays float32 on every device (no autocast): a verdict must not depend on where it
was computed beyond float rounding.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from harden.errors import InputError

DEVICE_HELP = "cpu, cuda (under torchrun: cuda:LOCAL_RANK), cuda:N, or auto (cuda when a GPU is visible)"


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """A `--device` value → a torch.device that exists on this machine (InputError otherwise)."""
    text = spec.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise InputError(f"--device {spec!r}: use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise InputError(
            f"--device {spec}: torch sees no CUDA GPU (a CPU build of torch, or no driver); use --device cpu"
        )
    index = int(match[1]) if match[1] is not None else local_rank
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def local_rank_from_environment() -> int:
    """torchrun's LOCAL_RANK (0 when not started by torchrun): this process's GPU on its machine."""
    text = os.environ.get("LOCAL_RANK", "0") or "0"
    try:
        return int(text)
    except ValueError as err:
        raise InputError(f"LOCAL_RANK must be an integer (torchrun sets it), got {text!r}") from err


def place(models: dict[str, nn.Module], device: torch.device) -> dict[str, nn.Module]:
    """Every model's parameters and buffers on `device` (in place; returned for chaining)."""
    for model in models.values():
        model.to(device)
    return models


def tensors_elsewhere(model: nn.Module, device: torch.device) -> list[str]:
    """Names of parameters and buffers of `model` that are not on `device` (should be none)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named if tensor.device != device]
