"""TensorRT build options as trtexec users know them: shape profile, workspace, timing cache.

Kept apart from `harden.export.tensorrt` (which needs TensorRT) so they are parsed, checked and
recorded on any machine: a wrong profile is refused before any work, with or without TensorRT.

- shapes: the optimisation profile of the image input, min/opt/max height×width and batch
  (trtexec's --minShapes/--optShapes/--maxShapes). The default is the run's image size for all
  three, batch 1/1/8: an engine is only valid inside its profile, so a default unrelated to the
  model (the old fixed 512×512) builds an engine that refuses the images it was exported for.
- workspace: the builder's memory pool limit for tactics (trtexec's --memPoolSize=workspace:N).
- timing cache: kernel timings saved next to the engine and reused by later builds (trtexec's
  --timingCacheFile); rebuilding with the same cache is faster and picks the same tactics.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from harden.errors import InputError

Size = tuple[int, int]
DEFAULT_MAX_BATCH: Final = 8
TIMING_CACHE_SUFFIX: Final = ".timing.cache"
_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


@dataclass(frozen=True)
class TrtShapes:
    """min ≤ opt ≤ max, per dimension; sizes are (height, width), batches are counts."""

    min_size: Size
    opt_size: Size
    max_size: Size
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        for name, value in (("min", self.min_size), ("opt", self.opt_size), ("max", self.max_size)):
            if len(value) != 2 or min(value) < 1:
                raise InputError(f"--trt-shapes {name}={value}: sizes are HEIGHTxWIDTH with both ≥ 1")
        for axis, label in ((0, "height"), (1, "width")):
            low, mid, high = self.min_size[axis], self.opt_size[axis], self.max_size[axis]
            if not low <= mid <= high:
                raise InputError(f"--trt-shapes: {label} must satisfy min ≤ opt ≤ max, got {low}, {mid}, {high}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(
                f"--trt-batch must satisfy 1 ≤ min ≤ opt ≤ max, got {self.min_batch},{self.opt_batch},{self.max_batch}"
            )

    @classmethod
    def at(cls, size: Size, batches: tuple[int, int, int] = (1, 1, DEFAULT_MAX_BATCH)) -> TrtShapes:
        """One image size for min, opt and max (the run's size)."""
        return cls(size, size, size, *batches)

    def profile(self, channels: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW shapes for `IOptimizationProfile.set_shape`."""
        return (
            (self.min_batch, channels, *self.min_size),
            (self.opt_batch, channels, *self.opt_size),
            (self.max_batch, channels, *self.max_size),
        )

    def check_static(self, fixed: Size | None) -> None:
        """A graph with a fixed H×W (PSPNet, Swin) accepts only that size."""
        if fixed is None:
            return
        if {self.min_size, self.opt_size, self.max_size} != {tuple(fixed)}:
            raise InputError(
                f"the exported graph has a fixed size {fixed[0]}x{fixed[1]}: --trt-shapes must use it for "
                f"min, opt and max (got {self.describe()})"
            )

    def describe(self) -> str:
        sizes = ",".join(f"{k}={h}x{w}" for k, (h, w) in zip(("min", "opt", "max"), self.sizes(), strict=True))
        return f"{sizes}; batch {self.min_batch},{self.opt_batch},{self.max_batch}"

    def sizes(self) -> tuple[Size, Size, Size]:
        return self.min_size, self.opt_size, self.max_size


def parse_shapes(text: str) -> dict[str, Size]:
    """`min=HxW,opt=HxW,max=HxW` (any subset; a missing key takes the others' value, see below)."""
    found: dict[str, Size] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(min|opt|max)=(\d+)x(\d+)", part.lower())
        if match is None:
            raise InputError(f"--trt-shapes: {part!r} is not KEY=HEIGHTxWIDTH with KEY min, opt or max")
        if match[1] in found:
            raise InputError(f"--trt-shapes: {match[1]} is given twice")
        found[match[1]] = (int(match[2]), int(match[3]))
    if not found:
        raise InputError("--trt-shapes is empty; write e.g. min=256x512,opt=512x1024,max=1024x2048")
    return found


def shapes_from(text: str | None, default: Size, batch: tuple[int, int, int] | None) -> TrtShapes:
    """The profile from `--trt-shapes`/`--trt-batch`; a missing opt is the run's size clamped into
    [min, max], a missing min or max is opt."""
    batches = batch or (1, 1, DEFAULT_MAX_BATCH)
    if not text:
        return TrtShapes.at(default, batches)
    given = parse_shapes(text)
    opt = given.get("opt")
    if opt is None:
        low, high = given.get("min", default), given.get("max", default)
        opt = (min(max(default[0], low[0]), high[0]), min(max(default[1], low[1]), high[1]))
    return TrtShapes(given.get("min", opt), opt, given.get("max", opt), *batches)


def parse_bytes(text: str) -> int:
    """`4GiB`, `512M`, `1073741824` → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InputError(f"--trt-workspace {text!r}: write a size such as 4GiB, 512MiB or a byte count")
    value = int(float(match[1]) * _UNITS[unit])
    if value < 1 << 20:
        raise InputError(f"--trt-workspace {text!r} is below 1 MiB: TensorRT would find no tactic")
    return value


@dataclass(frozen=True)
class TrtBuildOptions:
    """Everything `build_engine` needs besides the file; recorded in the manifest as is."""

    shapes: TrtShapes
    workspace_bytes: int | None = None  # None: TensorRT's default (the GPU's memory)
    timing_cache: Path | None = None  # None: beside the engine, <engine>.timing.cache

    def cache_for(self, engine: Path) -> Path:
        return self.timing_cache or engine.with_name(engine.name + TIMING_CACHE_SUFFIX)

    def to_dict(self, engine: Path) -> dict[str, Any]:
        """For the manifest: the profile, the workspace, and the timing cache (a file name when it
        sits beside the engine in the export directory, else the path given)."""
        shapes = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.shapes).items()}
        cache = self.cache_for(engine).name if self.timing_cache is None else str(self.timing_cache)
        return {"shapes": shapes, "workspace_bytes": self.workspace_bytes, "timing_cache": cache}
