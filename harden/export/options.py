"""`ExportOptions`: what `harden export` was asked to do, checked before any work.

The manifest records these options (`ExportManifest.options`), so they read back typed too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from harden.errors import InputError
from harden.export.precision import INT8_WEIGHTS, PRECISIONS
from harden.export.trt_options import TrtBuildOptions, TrtShapes, parse_bytes, parse_shapes, shapes_from


@dataclass(frozen=True)
class ExportOptions:
    """Args:
    precision: "fp32", "fp16" or "int8" (the fp32 file is always written too).
    trt: also build a TensorRT engine from the chosen variant.
    parity: compare every ONNX file with the PyTorch model after export.
    parity_images: dataset images in the parity check.
    image_size: (H, W) of the tracing example and of the graph for static-size models;
        None: the run's training image size.
    calib_data, calib_split, calib_images: int8 calibration images (data None: the run's data).
    int8_weights: "reduced" (7-bit: exact in ONNX Runtime on every x86-64 CPU) or "full"
        (8-bit: TensorRT, VNNI CPUs); None: "full" with --trt, else "reduced".
    trt_shapes: the engine's profile, `min=HxW,opt=HxW,max=HxW` (None: the image size for all).
    trt_batch: (min, opt, max) batch of the profile (None: 1, 1, 8).
    trt_workspace: the builder's workspace limit, e.g. "4GiB" (None: TensorRT's default).
    trt_timing_cache: the timing cache file (None: beside the engine).
    overwrite: replace an existing output directory (a harden export only).
    """

    precision: str = "fp32"
    trt: bool = False
    parity: bool = True
    parity_images: int = 8
    image_size: tuple[int, int] | None = None
    calib_data: str | None = None
    calib_split: str = "train"
    calib_images: int = 32
    int8_weights: str | None = None
    trt_shapes: str | None = None
    trt_batch: tuple[int, int, int] | None = None
    trt_workspace: str | None = None
    trt_timing_cache: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.parity_images < 1 or self.calib_images < 1:
            raise InputError("--parity-images and --calib-images must be at least 1")
        if self.int8_weights is not None and self.int8_weights not in INT8_WEIGHTS:
            raise InputError(f"--int8-weights must be one of {', '.join(INT8_WEIGHTS)}, got {self.int8_weights!r}")

        given = [name for name in ("trt_shapes", "trt_batch", "trt_workspace", "trt_timing_cache")
                 if getattr(self, name) is not None]  # fmt: skip
        if given and not self.trt:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise InputError(f"{flags} configure the TensorRT engine: add --trt, or leave them out")
        if self.trt_shapes is not None:  # refused before any work, with or without TensorRT
            sizes = parse_shapes(self.trt_shapes)
            shapes_from(self.trt_shapes, next(iter(sizes.values())), self.trt_batch)
        if self.trt_workspace is not None:
            parse_bytes(self.trt_workspace)
        if self.trt_batch is not None:
            TrtShapes.at((1, 1), self.trt_batch)

    def trt_build(self, image_size: tuple[int, int]) -> TrtBuildOptions:
        """The engine's build options; the profile defaults to `image_size` (the run's)."""
        return TrtBuildOptions(
            shapes=shapes_from(self.trt_shapes, image_size, self.trt_batch),
            workspace_bytes=parse_bytes(self.trt_workspace) if self.trt_workspace else None,
            timing_cache=self.trt_timing_cache,
        )

    @property
    def weight_range(self) -> str:
        """The int8 weight range: the stated one, else what the target engine computes exactly."""
        return self.int8_weights or ("full" if self.trt else "reduced")

    def to_dict(self) -> dict[str, Any]:
        """JSON values: tuples as lists, paths as strings."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
            elif isinstance(value, Path):
                out[key] = str(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ExportOptions:
        """The options as a manifest recorded them; InputError (exit 2) names what is wrong."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{where}: unknown export options {unknown}; export again with this harden")
        values = dict(data)
        try:
            for key in ("image_size", "trt_batch"):
                if values.get(key) is not None:
                    values[key] = tuple(int(v) for v in values[key])
            if values.get("trt_timing_cache") is not None:
                values["trt_timing_cache"] = Path(values["trt_timing_cache"])
            return cls(**values)
        except (TypeError, ValueError, InputError) as err:  # InputError: options that contradict each other
            raise InputError(f"{where}: malformed export options ({err}); export again") from err
