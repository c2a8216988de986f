"""Know the cost before spending it: estimate a command's peak memory and refuse, before any work,
a size or batch that cannot fit.

How the estimate is made (the same for every model, no per-architecture formula to keep true):
1. `peak_tensor_bytes` runs one step (a forward, or a forward and backward) under a dispatch mode
   that sees every tensor PyTorch allocates and frees, and returns the peak of the bytes alive.
2. `fit_memory` runs that step at a few small sizes of the requested aspect ratio (batch 1) and
   fits `bytes = fixed + batch · (linear · pixels + quadratic · pixels²)`: activations grow with
   the pixels, a global attention's N×N maps with their square, parameter gradients not at all.
3. `require_fits` compares the extrapolation, times `OVERHEAD` (what the allocator and the
   libraries add beyond the tensors, measured in docs/benchmarks.md), with the memory this
   process may use, and raises InputError (exit 2) naming the estimate, the limit, and a batch
   and a size that fit.

The memory available is the device's: on CPU the smaller of the kernel's `MemAvailable` and the
cgroup's limit, on CUDA the device's free memory; `HARDEN_MEMORY_LIMIT` (e.g. `8G`) lowers it, to
share a machine or to test a refusal.
"""

from __future__ import annotations

import functools
import math
import os
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harden.errors import InputError

# what a step's resident memory adds to its tensors (allocator slack, oneDNN's convolution
# workspaces, which no dispatch mode sees): measured 1.09–1.38 × the estimate on CPU for three
# models at two sizes (docs/benchmarks.md, "Memory estimates"); a refusal allows this much
OVERHEAD = 1.45
LIMIT_VARIABLE = "HARDEN_MEMORY_LIMIT"
# probe heights are multiples of this (the coarsest stride of the models here: 32)
PROBE_MULTIPLE = 32
PROBE_STEPS = (2, 3, 4)  # probe heights: PROBE_MULTIPLE × these (three points fit the two terms)

Step = Callable[[int, int, int], Any]  # (batch, height, width) → runs one step at that size


class _PeakTensorBytes(TorchDispatchMode):
    """Tracks the bytes of every storage created inside the mode while a tensor still holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address → [bytes, tensors holding it]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0:  # an empty tensor
                continue
            entry = self.live.get(key)
            if entry is None:
                self.live[key] = [storage.nbytes(), 1]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            else:
                entry[1] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def peak_tensor_bytes(step: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """The peak bytes of tensors alive at once while `step` runs (what it allocates; not what
    existed before, such as the weights). On CUDA, the allocator's own peak."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with _PeakTensorBytes() as tracker:
        step()
    return tracker.peak


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of one step as a function of batch and image size."""

    fixed: float  # independent of batch and size (parameter gradients)
    linear: float  # per image, per pixel
    quadratic: float  # per image, per pixel² (global attention)

    def bytes(self, batch: int, height: int, width: int) -> int:
        pixels = height * width
        return int(self.fixed + batch * (self.linear * pixels + self.quadratic * pixels**2))

    def largest_batch(self, height: int, width: int, limit: float) -> int:
        per_image = self.bytes(1, height, width) - self.fixed
        return max(0, int((limit - self.fixed) // max(per_image, 1)))

    def largest_size(self, batch: int, height: int, width: int, limit: float) -> tuple[int, int] | None:
        """The largest size of `height`:`width`'s aspect ratio (multiples of PROBE_MULTIPLE) that fits."""
        budget = (limit - self.fixed) / batch
        if budget <= 0:
            return None
        a, b = self.quadratic, self.linear  # solve a·N² + b·N ≤ budget for the pixel count N
        pixels = budget / b if a <= 0 else (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
        scale = math.sqrt(pixels / (height * width))
        fit_h = int(height * scale) // PROBE_MULTIPLE * PROBE_MULTIPLE
        fit_w = int(fit_h * width / height) // PROBE_MULTIPLE * PROBE_MULTIPLE  # keeps the aspect ratio
        return (fit_h, fit_w) if fit_h > 0 and fit_w > 0 else None


def probe_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Small sizes of `height`:`width`'s aspect ratio (multiples of PROBE_MULTIPLE), or the size
    itself when it is no larger than the largest probe."""
    if height * width <= (PROBE_MULTIPLE * PROBE_STEPS[-1]) ** 2:
        return [(height, width)]
    sizes = []
    for k in PROBE_STEPS:
        h = PROBE_MULTIPLE * k
        w = max(PROBE_MULTIPLE, round(h * width / height / PROBE_MULTIPLE) * PROBE_MULTIPLE)
        if h > height or w > width:  # a very wide or tall image: scale the short side instead
            w = PROBE_MULTIPLE * k
            h = max(PROBE_MULTIPLE, round(w * height / width / PROBE_MULTIPLE) * PROBE_MULTIPLE)
        sizes.append((h, w))
    return sorted(set(sizes))


def fit_memory(
    step: Step,
    height: int,
    width: int,
    *,
    device: torch.device | str = "cpu",
    fixed: float = 0.0,
    exact: bool = False,
) -> MemoryModel:
    """Measure `step` at small sizes of the requested aspect ratio and fit a `MemoryModel`.

    `fixed`: bytes the step allocates whatever the batch and size (parameter gradients).
    `exact`: measure at the size itself only (a model that takes no other size).
    """
    sizes = [(height, width)] if exact else probe_sizes(height, width)
    pixels = np.array([h * w for h, w in sizes], dtype=np.float64)
    per_image = np.array([peak_tensor_bytes(functools.partial(step, 1, h, w), device) for h, w in sizes]) - fixed
    per_image = np.maximum(per_image, 0.0)
    if len(sizes) == 1:
        return MemoryModel(fixed, float(per_image[0] / pixels[0]), 0.0)
    (linear, quadratic), *_ = np.linalg.lstsq(np.stack([pixels, pixels**2], axis=1), per_image, rcond=None)
    if quadratic < 0:  # nothing grows with the square: a straight line through the origin
        linear, quadratic = float(per_image @ pixels / (pixels @ pixels)), 0.0
    return MemoryModel(fixed, max(float(linear), 0.0), float(quadratic))


def available_bytes(device: torch.device | str = "cpu") -> tuple[int, str]:
    """(bytes this process may still allocate on `device`, where that figure comes from)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        found, source = int(free), f"free memory of {device}"
    else:
        found, source = _cpu_available()
    limit = os.environ.get(LIMIT_VARIABLE)
    if limit:
        wanted = parse_bytes(limit, LIMIT_VARIABLE)
        if wanted < found:
            return wanted, f"{LIMIT_VARIABLE}={limit}"
    return found, source


def _cpu_available() -> tuple[int, str]:
    found, source = _meminfo_available(), "available RAM"
    cgroup = _cgroup_room()
    if cgroup is not None and cgroup < found:
        found, source = cgroup, "room left under this container's memory limit"
    return found, source


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _cgroup_room() -> int | None:
    """The cgroup v2 limit minus what the cgroup uses, when a limit is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - int(used))


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str, where: str) -> int:
    """'8G', '512M', '1000000' → bytes; InputError naming `where` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise InputError(f"{where}={text!r}: write a size such as 8G, 512M or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def in_words(count: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def require_fits(
    model: MemoryModel,
    batch: int,
    height: int,
    width: int,
    what: str,
    *,
    device: torch.device | str = "cpu",
    size_option: str = "--image-size",
    batch_option: str | None = "--batch-size",
) -> int:
    """The estimate in bytes (with OVERHEAD) when it fits; InputError (exit 2) otherwise, saying
    which batch and which size would fit."""
    estimate = model.bytes(batch, height, width) * OVERHEAD
    limit, source = available_bytes(device)
    if estimate <= limit:
        return int(estimate)
    room = limit / OVERHEAD
    fixes = []
    fitting_batch = model.largest_batch(height, width, room)
    if batch_option is not None and 0 < fitting_batch < batch:
        fixes.append(f"{batch_option} {fitting_batch}")
    fitting = model.largest_size(batch, height, width, room)
    if fitting is not None:
        fixes.append(f"{size_option} {fitting[0]}x{fitting[1]}" if size_option.startswith("--") else
                     f"{size_option} at most {fitting[1]}×{fitting[0]} pixels")  # fmt: skip
    hint = ("use " + ", or ".join(fixes)) if fixes else "use a machine with more memory"
    batch_text = f", batch {batch}" if batch_option is not None else ""
    raise InputError(
        f"{what} at {width}×{height} pixels{batch_text} needs about {in_words(estimate)} but {in_words(limit)} "
        f"is free ({source}); it would fail late, out of memory. To fit: {hint}"
    )


# what an attack keeps per image beside the model's forward and backward: the clean and adversarial
# images, the best perturbation so far, the gradient and its running sums (image-sized), and the
# best logits (logit-sized) — counted from apgd.py and worst_case.py
ATTACK_IMAGE_BUFFERS = 8
ATTACK_LOGIT_BUFFERS = 2


def model_step(model: nn.Module, *, backward: bool) -> Step:
    """One forward (and, for an attack, a backward to the input) of `model` at a given size."""
    device = next(iter(model.parameters()), torch.empty(0)).device

    def step(batch: int, height: int, width: int) -> None:
        images = torch.rand(batch, 3, height, width, device=device, requires_grad=backward)
        with torch.set_grad_enabled(backward):
            logits = model(images)
            if backward:
                torch.autograd.grad(logits.float().sum(), images)

    return step


def require_model_fits(
    models: dict[str, nn.Module], batch: int, height: int, width: int, *, what: str, backward: bool,
    classes: int, device: torch.device | str = "cpu", exact_size: bool = False,
) -> int | None:  # fmt: skip
    """Refuse (exit 2) a batch or size at which the largest of `models` cannot run one step here.

    `backward`: an attack's step (forward, backward to the input, the attack's buffers); else
    a forward alone. `exact_size`: the models take only this size (a static ONNX input), so they
    are measured at it, batch 1. Returns the estimate in bytes, or None when a model could not be
    probed at a small size (it is then left to fail, or not, on the real size).
    """
    largest: MemoryModel | None = None
    for model in models.values():
        try:
            fitted = fit_memory(model_step(model, backward=backward), height, width, device=_device_of(model),
                                exact=exact_size)  # fmt: skip
        except InputError:
            raise
        except Exception:  # a model that refuses a probe size is judged at the real one
            return None
        if largest is None or fitted.bytes(batch, height, width) > largest.bytes(batch, height, width):
            largest = fitted
    if largest is None:
        return None
    if backward:  # the attack's own buffers, 4 bytes a value
        per_pixel = 4 * (3 * ATTACK_IMAGE_BUFFERS + classes * ATTACK_LOGIT_BUFFERS)
        largest = MemoryModel(largest.fixed, largest.linear + per_pixel, largest.quadratic)
    return require_fits(largest, batch, height, width, what, device=device)


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device
