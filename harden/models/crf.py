"""Mean-field inference of a dense CRF as a differentiable layer (CRF-as-RNN, Zheng et al. 2015),
to append to any segmentation model (Arnab et al. §7).

The CRF has the network's logits as unary potentials and two Gaussian pairwise kernels with a
Potts compatibility (Krähenbühl & Koltun 2011): a spatial kernel exp(−|p_i − p_j|²/2θγ²) that
smooths, and a bilateral kernel exp(−|p_i − p_j|²/2θα² − |I_i − I_j|²/2θβ²) that keeps edges
where the image has them. Each mean-field iteration is

    Q = softmax(z);  m = Σ_j k(i, j) Q_j;  z = U − (Σ_l' m_l' − m_l)

(message passing, Potts compatibility, adding the unaries). Two departures from CRF-RNN, both
for CPU-sized images and plain tensor ops that export to ONNX: the kernels are truncated to a
`window`×`window` neighbourhood (as ConvCRF, Teichmann & Cipolla 2019, instead of the
permutohedral lattice over the whole image), and each kernel is normalised to sum to one over
the neighbours, as CRF-RNN's implementation normalises its filter responses — so a kernel's
weight is the largest number of logits it can move a pixel by.

The output is the last iteration's logits z, not Q: harden models return logits (docs/design.md §2).
Gradients flow to the unaries, the kernel weights and — through the bilateral kernel — the image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harden.errors import InputError
from harden.models.base import SegmentationModel


@dataclass(frozen=True)
class CRFConfig:
    """Mean-field CRF settings; round-trips through JSON inside the run's ModelConfig.

    Args:
        iterations: mean-field iterations (CRF-RNN: 5 when training, 10 at test time).
        window: odd side of the square neighbourhood the kernels are truncated to, in pixels.
        spatial_sigma: θγ, the spatial kernel's bandwidth in pixels.
        bilateral_sigma: θα, the bilateral kernel's spatial bandwidth in pixels.
        color_sigma: θβ, the bilateral kernel's colour bandwidth on [0, 1] pixels (13/255 ≈ 0.05).
        spatial_weight, bilateral_weight: the kernels' weights w (learned when trained end to end).
    """

    iterations: int = 5
    window: int = 11
    spatial_sigma: float = 3.0
    bilateral_sigma: float = 8.0
    color_sigma: float = 0.05
    spatial_weight: float = 3.0
    bilateral_weight: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.iterations <= 50:
            problems.append(f"iterations {self.iterations} (1 to 50)")
        if self.window < 3 or self.window % 2 == 0 or self.window > 31:
            problems.append(f"window {self.window} (an odd number from 3 to 31)")
        for name in ("spatial_sigma", "bilateral_sigma", "color_sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} {value} (must be > 0)")
        for name in ("spatial_weight", "bilateral_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} {value} (must be ≥ 0)")
        if problems:
            raise InputError("bad CRF settings: " + ", ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CRFConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown CRF settings {sorted(unknown)}")
        return cls(**data)


class MeanFieldCRF(nn.Module):
    """Dense-CRF mean-field inference on (unary logits, image); see the module docstring."""

    def __init__(
        self,
        *,
        iterations: int = 5,
        window: int = 11,
        spatial_sigma: float = 3.0,
        bilateral_sigma: float = 8.0,
        color_sigma: float = 0.05,
        spatial_weight: float = 3.0,
        bilateral_weight: float = 5.0,
    ) -> None:
        super().__init__()
        CRFConfig(iterations, window, spatial_sigma, bilateral_sigma, color_sigma, spatial_weight, bilateral_weight)
        self.iterations = iterations
        self.radius = window // 2
        self.color_sigma = color_sigma
        self.spatial_weight = nn.Parameter(torch.tensor(float(spatial_weight)))
        self.bilateral_weight = nn.Parameter(torch.tensor(float(bilateral_weight)))
        r = self.radius
        self.offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
        distance2 = torch.tensor([float(dy * dy + dx * dx) for dy, dx in self.offsets])
        self.spatial_kernel: torch.Tensor
        self.bilateral_position: torch.Tensor
        self.register_buffer("spatial_kernel", torch.exp(-distance2 / (2 * spatial_sigma**2)), persistent=False)
        self.register_buffer("bilateral_position", torch.exp(-distance2 / (2 * bilateral_sigma**2)), persistent=False)
        self.shift_kernels: torch.Tensor  # (O, 1, window, window), one 1 each: picks neighbour o
        shifts = torch.zeros(len(self.offsets), 1, window, window)
        for o, (dy, dx) in enumerate(self.offsets):
            shifts[o, 0, r + dy, r + dx] = 1.0
        self.register_buffer("shift_kernels", shifts, persistent=False)

    def neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) → (B, C, O, H, W): [.., o, i, j] = x[.., i+dy_o, j+dx_o], zero outside the image.
        One convolution with one-hot kernels, so it exports as one Conv node."""
        batch, channels, height, width = x.shape
        stack = F.conv2d(x.reshape(batch * channels, 1, height, width), self.shift_kernels, padding=self.radius)
        return stack.view(batch, channels, len(self.offsets), height, width)

    def pairwise_weights(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1] → weight of each neighbour (B, O, H, W): w_s·k_s/Σk_s + w_b·k_b/Σk_b,
        each kernel normalised over the neighbours that lie inside the image."""
        inside = self.neighbours(torch.ones_like(image[:, :1]))[:, 0]  # (B, O, H, W)
        color = (self.neighbours(image) - image.unsqueeze(2)).square().sum(1)  # (B, O, H, W)
        spatial = self.spatial_kernel.view(1, -1, 1, 1) * inside
        bilateral = self.bilateral_position.view(1, -1, 1, 1) * torch.exp(-color / (2 * self.color_sigma**2)) * inside
        spatial = spatial / spatial.sum(1, keepdim=True)
        bilateral = bilateral / bilateral.sum(1, keepdim=True).clamp_min(1e-12)
        return self.spatial_weight * spatial + self.bilateral_weight * bilateral

    def forward(self, unaries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Unary logits (B, K, H, W) and the image (B, 3, H, W) → CRF logits (B, K, H, W)."""
        if unaries.shape[-2:] != image.shape[-2:] or unaries.shape[0] != image.shape[0]:
            raise ValueError(f"unaries {tuple(unaries.shape)} and image {tuple(image.shape)} must share B, H, W")
        weights = self.pairwise_weights(image)  # (B, O, H, W)
        logits = unaries
        for _ in range(self.iterations):
            q = torch.softmax(logits, dim=1)
            if torch.compiler.is_compiling():  # ONNX export: a compact graph (Conv, Mul, ReduceSum)
                message = (self.neighbours(q) * weights.unsqueeze(1)).sum(2)
            elif torch.is_grad_enabled():
                message = _Message.apply(q, weights, self.offsets, self.radius)
            else:  # a loop over the offsets holds one (B, K, H, W) at a time, not O of them
                message = _message(q, weights, self.offsets, self.radius)
            # Potts: a pixel pays the message of every label other than its own
            logits = unaries - (message.sum(1, keepdim=True) - message)
        return logits


def _message(q: torch.Tensor, weights: torch.Tensor, offsets: list[tuple[int, int]], r: int) -> torch.Tensor:
    """m[b, k, i, j] = Σ_o weights[b, o, i, j] · q[b, k, i+dy_o, j+dx_o] (zero outside the image)."""
    height, width = q.shape[-2:]
    padded = F.pad(q, (r, r, r, r))
    message = torch.zeros_like(q)
    for o, (dy, dx) in enumerate(offsets):
        message = message + weights[:, o : o + 1] * padded[:, :, r + dy : r + dy + height, r + dx : r + dx + width]
    return message


class _Message(torch.autograd.Function):
    """`_message` with a hand-written backward. Autograd's own would allocate a padded-size
    gradient per offset and sum them (~20× the forward's time on CPU); this one accumulates
    into one padded buffer in place."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, weights: torch.Tensor, offsets: list[tuple[int, int]], r: int
    ) -> torch.Tensor:
        ctx.save_for_backward(q, weights)
        ctx.offsets, ctx.r = offsets, r
        return _message(q, weights, offsets, r)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        q, weights = ctx.saved_tensors
        r, (height, width) = ctx.r, q.shape[-2:]
        padded_q = F.pad(q, (r, r, r, r))
        grad_q = torch.zeros_like(padded_q) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weights) if ctx.needs_input_grad[1] else None
        for o, (dy, dx) in enumerate(ctx.offsets):
            rows, cols = slice(r + dy, r + dy + height), slice(r + dx, r + dx + width)
            if grad_q is not None:
                grad_q[:, :, rows, cols] += weights[:, o : o + 1] * grad
            if grad_w is not None:
                grad_w[:, o] = (grad * padded_q[:, :, rows, cols]).sum(1)
        if grad_q is not None:
            grad_q = grad_q[:, :, r : r + height, r : r + width]
        return grad_q, grad_w, None, None


class WithCRF(SegmentationModel):
    """`base` with a mean-field CRF appended: the base's logits are the CRF's unaries.

    Args:
        base: any segmentation model (also a `MultiScale` one: the CRF then follows the fusion).
        crf: the CRF settings.
    """

    def __init__(self, base: SegmentationModel, crf: CRFConfig) -> None:
        super().__init__(base.num_classes)
        self.base = base
        self.crf = MeanFieldCRF(**crf.to_dict())
        self.export_static_size = base.export_static_size
        self.backbone_modules = tuple(f"base.{name}" for name in base.backbone_modules)

    @property
    def unaries(self) -> SegmentationModel:
        """The network without its CRF: where §7.2's transfer attack is crafted."""
        return self.base

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.base.forward_with_features(x)
        return self.crf(logits, x), features


def crf_unaries(model: nn.Module) -> SegmentationModel | None:
    """The unaries of a model ending in a CRF, or None for a model without one."""
    return model.unaries if isinstance(model, WithCRF) else None
