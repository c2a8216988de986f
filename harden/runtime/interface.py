"""How a segmentation model's file is fed and read: which input takes the image, which output
is the logits, what the input expects (pixel range, normalisation) and what comes out (logits at
a lower resolution).

harden's threat model lives in pixel space: images are float32 in [0, 1], (B, 3, H, W), and ε is
a budget on those pixels (docs/design.md §2). A user's model may expect [0, 255] or mean/std
normalisation done outside the model, and may return logits at H/4 (HF SegFormer). The
interface applies that preprocessing before the graph and upsamples the logits to the image size
after it, identically for the engine and every twin, so attacks, metrics and parity all stay in
pixel space. harden's own exports need none of it (`ModelInterface()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from harden.errors import InputError
from harden.export.onnx_export import IMAGE, LOGITS, RAD_SEED

PIXEL_RANGES = (1.0, 255.0)


@dataclass(frozen=True)
class ModelInterface:
    """Args:
    input: the graph input that takes the (preprocessed) image, NCHW.
    output: the graph output that holds the logits (B, K, h, w).
    seed: the graph input that takes RAD's seed (harden exports), or None.
    pixel_range: what the model reads for a white pixel: 1.0 ([0, 1]) or 255.0 ([0, 255]).
    mean, std: per-channel normalisation in the model's pixel range, applied before the graph;
        None when the graph normalises itself (or expects none).
    batch: the input's fixed batch size (a static export), or None when it is dynamic.
    """

    input: str = IMAGE
    output: str = LOGITS
    seed: str | None = None
    pixel_range: float = 1.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.pixel_range not in PIXEL_RANGES:
            raise InputError(f"--pixel-range must be 1 or 255, got {self.pixel_range:g}")
        if (self.mean is None) != (self.std is None):
            raise InputError("give --mean and --std together (per-channel, in the model's pixel range)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise InputError(f"--std must be positive, got {self.std}")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels → what the graph's input expects (differentiable)."""
        out = images * self.pixel_range if self.pixel_range != 1.0 else images
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
            out = (out - mean) / std
        return out

    def feed(self, images: torch.Tensor, seed: int | None = None) -> dict[str, np.ndarray]:
        """ONNX Runtime's input feed for [0, 1] `images` (and RAD's seed when the graph takes one)."""
        with torch.no_grad():
            feed = {self.input: self.preprocess(images.detach().float().cpu()).contiguous().numpy()}
        if self.seed is not None:
            feed[self.seed] = np.array(0 if seed is None else seed, dtype=np.int64)
        return feed

    def postprocess(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits at the image size: bilinear upsampling (half-pixel) when the model's are smaller."""
        if logits.dim() != 4:
            raise InputError(f"output {self.output!r} has shape {tuple(logits.shape)}; expected (B, K, h, w) logits")
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)

    def describe(self) -> str:
        parts = [f"input {self.input!r} ({'[0, 255]' if self.pixel_range == 255.0 else '[0, 1]'} pixels"]
        if self.mean is not None:
            parts[0] += f", normalised by mean {list(self.mean)} and std {list(self.std or ())}"
        parts[0] += ")"
        parts.append(f"output {self.output!r} (upsampled bilinearly to the image size when smaller)")
        if self.batch is not None:
            parts.append(f"fixed batch {self.batch} (run image by image)")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "seed": self.seed, "pixel_range": self.pixel_range,
                "mean": self.mean, "std": self.std, "batch": self.batch}  # fmt: skip


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def find_interface(
    model: onnx.ModelProto,
    input: str | None = None,
    output: str | None = None,
    pixel_range: float = 1.0,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> ModelInterface:
    """The interface of a graph: the image input and the logits output by name, or found when
    there is only one candidate; anything else is refused with what to pass."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    outputs = {o.name: o for o in model.graph.output}
    seed = RAD_SEED if RAD_SEED in inputs else None
    if input is None:
        images = [n for n, v in inputs.items() if n != seed and len(_dims(v)) == 4]
        if IMAGE in inputs:
            input = IMAGE
        elif len(images) == 1:
            input = images[0]
        else:
            raise InputError(
                f"cannot tell which input takes the image (4-D inputs: {images or 'none'}, all: {list(inputs)}): "
                "pass --input NAME"
            )
    if input not in inputs:
        raise InputError(f"--input {input!r}: the graph has no such input (inputs: {list(inputs)})")
    extra = [n for n in inputs if n not in (input, seed)]
    if extra:
        raise InputError(
            f"the graph has inputs besides the image: {extra}; verify needs a model that maps an image to "
            "logits — export it with those inputs fixed (e.g. as constants)"
        )
    dims = _dims(inputs[input])
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] not in (0, 3)):
        raise InputError(f"input {input!r} has shape {dims}; expected an NCHW image (B, 3, H, W)")
    if output is None:
        if LOGITS in outputs:
            output = LOGITS
        elif len(outputs) == 1:
            output = next(iter(outputs))
        else:
            raise InputError(f"the graph has several outputs {list(outputs)}: pass --output NAME (the logits)")
    if output not in outputs:
        raise InputError(f"--output {output!r}: the graph has no such output (outputs: {list(outputs)})")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    if batch is not None and batch != 1:
        raise InputError(
            f"input {input!r} has a fixed batch of {batch}; export it with a dynamic batch or a batch of 1 "
            "(verify then runs image by image)"
        )
    return ModelInterface(input, output, seed, pixel_range, mean, std, batch)


def fixed_image_size(model: onnx.ModelProto, interface: ModelInterface) -> tuple[int, int] | None:
    """(H, W) when the graph's image input has a static size (a static export), else None."""
    for value in model.graph.input:
        if value.name == interface.input:
            height, width = _dims(value)[2:]
            if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
                return height, width
    return None


def output_classes(model: onnx.ModelProto, interface: ModelInterface) -> int | None:
    """Number of classes from the logits output's static channel dimension, if it is static."""
    for value in model.graph.output:
        if value.name == interface.output:
            dims = _dims(value)
            if len(dims) == 4 and isinstance(dims[1], int) and dims[1] > 0:
                return dims[1]
    return None
