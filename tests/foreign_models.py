"""Foreign segmentation models, built here the way a user's toolchain builds them: a UNet-style
CNN and a tiny HF SegFormer, briefly trained on synthetic scenes, exported by the TorchScript
exporter (opset 13/17) and by dynamo, then passed through ONNX Runtime's optimiser, its QDQ,
QOperator and dynamic quantisers and its float16 converter. None of them has a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from harden.data import SyntheticStreets
from harden.data.classes import IGNORE_INDEX

SIZE = (32, 64)
CLASSES = 19


class UNet(nn.Module):
    """GroupNorm, InstanceNorm, LeakyReLU, Hardswish, Hardsigmoid, PReLU, ConvTranspose, GELU,
    nearest Upsample and skip connections: what the twin met in users' CNNs."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.LeakyReLU(0.1))
        self.b = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.InstanceNorm2d(32, affine=True),
                               nn.Hardswish())  # fmt: skip
        self.c = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        self.gate = nn.Sequential(nn.Conv2d(32, 32, 1), nn.Hardsigmoid())
        self.up = nn.ConvTranspose2d(32, 32, 2, stride=2)
        self.prelu = nn.PReLU(32)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(32 + 32 + 16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(a)
        c = self.c(b)
        c = c * self.gate(c)
        u = F.gelu(self.prelu(self.up(c)) + b)
        return self.head(torch.cat([self.upsample(torch.cat([u, b], 1)), a], 1))


def tiny_segformer() -> nn.Module:
    """An HF SegFormer (logits at H/4) behind a module that returns the logits tensor."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=CLASSES,
    )  # fmt: skip

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = SegformerForSemanticSegmentation(config)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).logits

    return Logits()


def train(model: nn.Module, steps: int = 60, seed: int = 0) -> nn.Module:
    """A few Adam steps on synthetic scenes (enough that argmax agreement means something)."""
    torch.manual_seed(seed)
    data = SyntheticStreets("train", SIZE, 64, seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.stack([data[i][1] for i in range(len(data))])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = torch.arange(step * 8, step * 8 + 8) % len(data)
        logits = model(images[batch])
        logits = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels[batch], ignore_index=IGNORE_INDEX)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def export(model: nn.Module, path: Path, *, opset: int = 17, dynamo: bool = False, input_name: str = "input",
           output_name: str = "output") -> Path:  # fmt: skip
    example = torch.rand(1, 3, *SIZE)
    if dynamo:
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamo=True, external_data=False)  # fmt: skip
    else:
        axes = {0: "batch", 2: "height", 3: "width"}
        dynamic = {input_name: axes, output_name: axes}
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)  # fmt: skip
    onnx.checker.check_model(str(path))
    return path


def ort_optimised(source: Path, path: Path) -> Path:
    """ONNX Runtime's extended graph optimisations, saved (FusedConv, Gelu, FusedMatMul, …)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return path


def ort_quantised(source: Path, path: Path, kind: str) -> Path:
    """ONNX Runtime's quantisers: "qdq" and "qoperator" (static, calibrated on synthetic scenes,
    per-channel weights, 7-bit weight range so no CPU's int8 kernels saturate) or "dynamic"."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    name = onnx.load(str(source)).graph.input[0].name
    data = SyntheticStreets("train", SIZE, 8, 1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: data[i][0].unsqueeze(0).numpy()} for i in range(len(data))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    if kind == "dynamic":
        quantize_dynamic(str(source), str(path))
    else:
        quant_format = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
        quantize_static(str(source), str(path), Reader(), quant_format=quant_format, per_channel=True,
                        reduce_range=True)  # fmt: skip
    return path


def ort_float16(source: Path, path: Path) -> Path:
    """ONNX Runtime's float16 converter, float32 inputs and outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(path))
    return path
