"""What ONNX Runtime's int8 kernels compute on an x86-64 CPU WITHOUT VNNI, emulated on any CPU.

On AVX2 without VNNI, MLAS's u8s8 GEMM multiplies uint8 activations (ONNX Runtime shifts int8
ones by +128) by int8 weights with `vpmaddubsw`, which adds each pair of products along K in
saturating int16, and then sums the pairs in int32 (`vpmaddwd`). This script replays that on the
graph twin of an int8 file: every Conv (group 1) and MatMul whose inputs are dequantised int8
tensors is computed in integers with the pair saturation, and the logits are compared with the
file as written. It is an emulation: the pairing follows the GEMM's K order (im2col in (kh, kw,
C) order for convolutions, as ONNX Runtime's NHWC QLinearConv does); depthwise convolutions
run a kernel without pairs and are left exact.

    python bench/non_vnni_emulation.py [RUN_DIR] [--images 16]

Without RUN_DIR a segformer_tiny with RAM is trained for 12 epochs on 64×128 synthetic scenes
first (about a minute on 2 cores). Prints, per weight range, how many GEMM outputs saturate and
the argmax agreement of the emulated engine with the file as written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import harden, small_ram_run

from harden.attacks.evaluate import DRAW_SEED
from harden.data import collate_pad, open_dataset
from harden.ram import fixed_rad_seed
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.op_table import latest

INT16 = (-32768, 32767)


def pair_saturated(products: torch.Tensor, dim: int, saturate: bool = True) -> tuple[torch.Tensor, int]:
    """Sum int products along `dim` as vpmaddubsw + vpmaddwd do; also the saturated pair count.

    saturate=False adds the pairs exactly (a VNNI CPU): the check that the emulation itself is
    exact, so any difference with saturation on is the saturation's."""
    dim = dim % products.dim()
    if products.shape[dim] % 2:  # an odd K: the last pair has a zero partner
        products = F.pad(products, [0, 0] * (products.dim() - 1 - dim) + [0, 1])
    even, odd = products.narrow(dim, 0, products.shape[dim] // 2 * 2).unflatten(dim, (-1, 2)).unbind(dim + 1)
    pairs = even + odd
    clipped = pairs.clamp(*INT16) if saturate else pairs
    return clipped.sum(dim), int((clipped != pairs).sum())


class Emulator:
    """Conv/MatMul ops that compute dequantised int8 inputs with the non-VNNI pair saturation."""

    def __init__(self, model: onnx.ModelProto, saturate: bool = True) -> None:
        self.saturate = saturate
        constants = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # DQ output → (int8, scale)
        self.activations: dict[str, float] = {}  # DQ output → activation scale (zero point 0)
        for node in model.graph.node:
            if node.op_type != "DequantizeLinear":
                continue
            scale = torch.from_numpy(constants[node.input[1]]).double()
            if node.input[0] in constants:
                self.weights[node.output[0]] = (torch.from_numpy(constants[node.input[0]]).long(), scale)
            elif node.input[0] in producers and scale.numel() == 1:
                self.activations[node.output[0]] = float(scale)
        self.saturated = 0
        self.outputs = 0

    def conv(self, x: torch.Tensor, q_w: torch.Tensor, s_a: float, s_w: torch.Tensor, attrs: dict[str, Any]) -> Any:
        if attrs.get("group", 1) != 1 or x.dim() != 4:
            return None
        kh, kw = q_w.shape[-2:]
        pads = attrs.get("pads", [0, 0, 0, 0])
        q_a = torch.round(x.double() / s_a).long() + 128  # int8 → uint8, as ONNX Runtime shifts it
        q_a = F.pad(q_a, [pads[1], pads[3], pads[0], pads[2]], value=128)  # zero point of the shifted input
        cols = F.unfold(q_a.double(), (kh, kw), dilation=attrs.get("dilations", [1, 1]),
                        stride=attrs.get("strides", [1, 1])).long()  # fmt: skip
        channels = x.shape[1]
        # (B, C·kh·kw, L) in (C, kh, kw) order → (B, kh·kw·C, L): the NHWC im2col order
        cols = cols.view(x.shape[0], channels, kh * kw, -1).transpose(1, 2).reshape(x.shape[0], -1, cols.shape[-1])
        w = q_w.permute(0, 2, 3, 1).reshape(q_w.shape[0], -1)  # (N, kh·kw·C)
        products = cols[:, None] * w[None, :, :, None]  # (B, N, K, L)
        sums, saturated = pair_saturated(products, 2, self.saturate)
        exact_shift = 128 * w.sum(1)[None, :, None]  # the +128 shift, corrected exactly
        self.saturated += saturated
        self.outputs += sums.numel()
        out_h = (x.shape[2] + pads[0] + pads[2] - (kh - 1) * attrs.get("dilations", [1, 1])[0] - 1) // attrs.get(
            "strides", [1, 1]
        )[0] + 1
        result = ((sums - exact_shift).double() * s_a * s_w.view(1, -1, 1)).view(
            x.shape[0], -1, out_h, sums.shape[-1] // out_h
        )
        return result.float()

    def matmul(self, x: torch.Tensor, q_w: torch.Tensor, s_a: float, s_w: torch.Tensor) -> torch.Tensor:
        q_a = torch.round(x.double() / s_a).long() + 128
        products = q_a[..., :, :, None] * q_w  # (..., M, K, N)
        sums, saturated = pair_saturated(products, -2, self.saturate)
        self.saturated += saturated
        self.outputs += sums.numel()
        return ((sums - 128 * q_w.sum(0)).double() * s_a * s_w).float()


def emulated_logits(
    path: Path, images: torch.Tensor, saturate: bool = True
) -> tuple[torch.Tensor, torch.Tensor, Emulator]:
    model = onnx.load(str(path))
    emulator = Emulator(model, saturate)
    twin = GraphTwin(model)
    with torch.no_grad(), fixed_rad_seed(twin, DRAW_SEED):
        written = twin(images)
    conv, matmul = latest("", "Conv"), latest("", "MatMul")

    # The twin's own loop, with the int8 GEMMs replaced (they need the names of their inputs).
    def run_node(domain: str, op_type: str, inputs: list[str], values: dict[str, Any], attrs: dict[str, Any]) -> Any:
        if op_type in ("Conv", "MatMul") and inputs[0] in emulator.activations and inputs[1] in emulator.weights:
            q_w, s_w = emulator.weights[inputs[1]]
            s_a = emulator.activations[inputs[0]]
            x = values[inputs[0]]
            if op_type == "Conv":
                out = emulator.conv(x, q_w, s_a, s_w, attrs)
                if out is not None:
                    bias = values[inputs[2]] if len(inputs) > 2 and inputs[2] else None
                    return out + bias.view(1, -1, 1, 1) if bias is not None else out
            elif q_w.dim() == 2:
                return emulator.matmul(x, q_w, s_a, s_w)
        fn = conv if op_type == "Conv" else matmul if op_type == "MatMul" else latest(domain, op_type)
        return fn([values[name] for name in inputs], attrs)

    values: dict[str, Any] = {"": None, **twin.constants(), "image": images}
    if twin.takes_seed:
        values["rad_seed"] = torch.tensor(DRAW_SEED)
    with torch.no_grad(), fixed_rad_seed(twin, DRAW_SEED):
        for domain, op_type, inputs, outputs, attrs in twin.nodes:
            result = run_node(domain, op_type, inputs, values, attrs)
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            values.update(zip(outputs, results, strict=False))
    return values["logits"].float(), written, emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harden-bench-") as scratch:
        run = args.run_dir
        if run is None:
            run = small_ram_run(Path(scratch) / "run", args.images)
        dataset = open_dataset("synthetic", "val", size=(64, 128), num_images=args.images, seed=0)
        images, _ = collate_pad([dataset[i] for i in range(len(dataset))])
        print(f"{'weights':<8} {'CPU':<8} {'saturated pairs':>16} {'agreement vs as written':>24} {'max|Δlogit|':>12}")
        for weights in ("reduced", "full"):
            out = Path(scratch) / weights
            harden("export", str(run), "--out", str(out), "--precision", "int8", "--int8-weights", weights,
                   "--no-parity")  # fmt: skip
            for cpu, saturate in (("VNNI", False), ("AVX2", True)):
                emulated, written, emulator = emulated_logits(out / "model.int8.onnx", images, saturate)
                agreement = float((emulated.argmax(1) == written.argmax(1)).float().mean())
                print(f"{weights:<8} {cpu:<8} {emulator.saturated:>16} {agreement:>24.4%} "
                      f"{float((emulated - written).abs().max()):>12.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
