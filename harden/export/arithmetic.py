"""Does this engine, on this hardware, compute what the file says? (docs/design.md §6b)

An ONNX file has one meaning — each node as the ONNX spec defines it, which ONNX Runtime runs
with its graph optimisations off ("as written"). A deployment runs ONNX Runtime's fused
kernels instead, and for int8 those depend on the CPU: on x86-64 without VNNI, the u8s8 GEMM
multiplies uint8 activations by int8 weights with `vpmaddubsw`, which adds each PAIR of
products in saturating int16. With 8-bit weights a pair can reach 2·255·127 = 64770 and is
clipped at 32767; ONNX Runtime documents this and recommends 7-bit weights (`reduce_range`) or
U8U8 there. With weights in [−64, 64] a pair is at most 2·255·64 = 32640: it cannot saturate.

This module measures the two arithmetics against each other, reads the file's int8 weight
ranges, reads the CPU's features, and turns the three into a cause and a remedy. It answers a
different question from parity: parity says whether the file is the model; this says whether
the engine is the file.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import numpy_helper

from harden.json_fields import Fields

# |int8 weight| up to this keeps a pair of u8·s8 products within int16: 2·255·64 = 32640 ≤ 32767.
SATURATION_FREE_WEIGHT: Final = 64
# Argmax agreement of the deployed kernels with the file as written, per precision. fp32 differs
# by summation order only; fp16 and int8 kernels round differently from float Q/DQ, and a
# flipped quantisation level near a decision boundary flips a pixel (VNNI CPU, demo: ≥ 99.9 %).
MIN_AGREEMENT: Final = {"fp32": 0.999, "fp16": 0.99, "int8": 0.98}
# Weight inputs of the integer ops other toolchains write (QOperator and dynamic quantisation).
_INTEGER_WEIGHT_INPUT: Final = {"QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1}
_VNNI_FLAGS: Final = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInt8:
    """What this CPU offers ONNX Runtime's int8 kernels.

    vnni is None off x86-64 (the int16 pair saturation is an x86-64 pattern).
    """

    machine: str
    features: tuple[str, ...]
    vnni: bool | None

    def describe(self) -> str:
        if self.vnni is None:
            return f"{self.machine} CPU (not x86-64)"
        shown = ", ".join(self.features) or "no AVX2"
        return f"x86-64 CPU with {shown}" + ("" if self.vnni else " — no VNNI (AVX512-VNNI, AVX-VNNI or AMX)")


def cpu_int8(flags: set[str] | None = None) -> CpuInt8:
    """This machine's int8-relevant CPU features (`flags`: /proc/cpuinfo names, for tests)."""
    machine = platform.machine().lower()
    if flags is None and machine not in ("x86_64", "amd64"):
        return CpuInt8(machine, (), None)
    if flags is None:
        flags = _cpu_flags()
    shown = tuple(f for f in ("avx2", "avx512f", *_VNNI_FLAGS) if f in flags)
    return CpuInt8("x86_64", shown, any(f in flags for f in _VNNI_FLAGS))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: numpy knows the same features under other names
        from numpy._core._multiarray_umath import __cpu_features__  # type: ignore[import-not-found]

        names = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni", "AVX_VNNI": "avx_vnni"}
        return {ours for theirs, ours in names.items() if __cpu_features__.get(theirs)}
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# The instruction-set features that select ONNX Runtime's and PyTorch's CPU kernels (int8 dot
# products, bf16/fp16 paths): what a verdict's machine is named by (`machine_facts`).
_KERNEL_FLAGS: Final = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", *_VNNI_FLAGS, "avx512_bf16",
                        "avx512_fp16", "amx_tile", "amx_bf16")  # fmt: skip


def machine_facts() -> dict[str, Any]:
    """The CPU (model name, kernel-selecting features) and the library versions a verdict's
    numerics depend on: verify.json records them so a verdict can be traced to its machine."""
    import sys

    import numpy
    import onnxruntime
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = _cpu_flags() if platform.machine().lower() in ("x86_64", "amd64") else set()
    return {
        "cpu": model,
        "cpu_features": [f for f in _KERNEL_FLAGS if f in flags],
        "python": sys.version.split()[0],
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "libraries": {
            "numpy": numpy.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": ",".join(onnxruntime.get_available_providers()),
        },
    }


@dataclass(frozen=True)
class Int8Weights:
    """The int8 weight tensors of a file and how many can make a u8s8 pair sum saturate."""

    tensors: int
    beyond: int  # max |q| > SATURATION_FREE_WEIGHT
    max_abs: int
    example: str | None  # a tensor beyond the bound, for the message

    @property
    def can_saturate(self) -> bool:
        return self.beyond > 0


def int8_weights(model: onnx.ModelProto) -> Int8Weights:
    """Read the constant int8 weights feeding DequantizeLinear (Q/DQ files) or integer ops."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    names = []
    for node in model.graph.node:
        index = 0 if node.op_type == "DequantizeLinear" else _INTEGER_WEIGHT_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in constants:
            names.append(node.input[index])
    tensors = beyond = max_abs = 0
    example = None
    for name in dict.fromkeys(names):
        proto = constants[name]
        if proto.data_type != onnx.TensorProto.INT8:
            continue
        largest = int(np.abs(numpy_helper.to_array(proto).astype(np.int32)).max(initial=0))
        tensors += 1
        max_abs = max(max_abs, largest)
        if largest > SATURATION_FREE_WEIGHT:
            beyond += 1
            example = example or name
    return Int8Weights(tensors, beyond, max_abs, example)


@dataclass(frozen=True)
class ArithmeticComparison:
    """The deployed kernels against the file as written, on the same feeds."""

    images: int
    max_abs_diff: float
    argmax_agreement: float
    miou_deployed: float
    miou_as_written: float

    @property
    def miou_change(self) -> float:
        return abs(self.miou_deployed - self.miou_as_written)


def compare_logits(
    deployed: np.ndarray, as_written: np.ndarray, labels: np.ndarray, num_classes: int
) -> ArithmeticComparison:
    """Logits (B, K, H, W) of both arithmetics and labels (B, H, W) → the comparison."""
    import torch

    from harden.metrics import ConfusionMatrix  # torch: only once there is something to compare

    deployed64, written64 = deployed.astype(np.float64), as_written.astype(np.float64)
    difference = np.nan_to_num(np.abs(deployed64 - written64), nan=np.inf)
    mious = []
    for logits in (deployed64, written64):
        matrix = ConfusionMatrix(num_classes)
        matrix.update(torch.from_numpy(logits.argmax(1)), torch.from_numpy(labels).long())
        mious.append(matrix.miou())
    return ArithmeticComparison(
        images=deployed.shape[0],
        max_abs_diff=float(difference.max()) if difference.size else 0.0,
        argmax_agreement=float((deployed64.argmax(1) == written64.argmax(1)).mean()),
        miou_deployed=mious[0],
        miou_as_written=mious[1],
    )


@dataclass(frozen=True)
class ArithmeticVerdict:
    """What verify and export report: the figures, pass/fail, and the named cause and remedy."""

    engine: str
    precision: str
    cpu: str
    comparison: ArithmeticComparison
    min_agreement: float
    int8_weight_tensors: int
    int8_weights_beyond_bound: int
    passed: bool
    cause: str | None
    remedy: str | None

    def detail(self) -> str:
        c = self.comparison
        figures = (
            f"{self.engine} vs the same file as written, {c.images} images: argmax agreement "
            f"{c.argmax_agreement:.4%} (gate ≥ {self.min_agreement:.2%}), max |Δlogit| {c.max_abs_diff:.3g}, "
            f"mIoU {c.miou_as_written:.4f} → {c.miou_deployed:.4f}"
        )
        if self.passed:
            return figures + f" on this {self.cpu}: the engine computes the file"
        return figures + f". Cause: {self.cause} Remedy: {self.remedy}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparison"]["miou_change"] = self.comparison.miou_change
        out["detail"] = self.detail()
        return out

    @classmethod
    def from_dict(cls, f: Fields) -> ArithmeticVerdict:
        """Read back what `to_dict` wrote (the derived `detail` and `miou_change` are recomputed)."""
        c = f.required_object("comparison")
        comparison = ArithmeticComparison(
            images=c.integer("images", low=0, high=10**9),
            max_abs_diff=c.number("max_abs_diff"),
            argmax_agreement=c.number("argmax_agreement"),
            miou_deployed=c.number("miou_deployed"),
            miou_as_written=c.number("miou_as_written"),
        )
        return cls(
            engine=f.string("engine"),
            precision=f.string("precision"),
            cpu=f.string("cpu"),
            comparison=comparison,
            min_agreement=f.number("min_agreement"),
            int8_weight_tensors=f.integer("int8_weight_tensors", low=0),
            int8_weights_beyond_bound=f.integer("int8_weights_beyond_bound", low=0),
            passed=f.boolean("passed"),
            cause=f.string("cause", optional=True),
            remedy=f.string("remedy", optional=True),
        )


@dataclass(frozen=True)
class ArithmeticRecord:
    """The engine's kernels on this hardware vs the file as written: a verdict, or n/a and why."""

    status: str  # pass | fail | n/a
    verdict: ArithmeticVerdict | None = None
    detail: str = ""

    @property
    def text(self) -> str:
        return self.detail if self.verdict is None else self.verdict.detail()

    def to_dict(self) -> dict[str, Any]:
        if self.verdict is None:
            return {"status": self.status, "detail": self.detail}
        return {"status": self.status, **self.verdict.to_dict()}

    @classmethod
    def from_dict(cls, f: Fields) -> ArithmeticRecord:
        if f.string("status") == "n/a":
            return cls("n/a", None, f.string("detail"))
        return cls(f.string("status"), ArithmeticVerdict.from_dict(f))


REMEDY_SATURATION: Final = (
    "deploy on a CPU with VNNI or on TensorRT, or re-export with 7-bit weights "
    "(`harden export RUN_DIR --precision int8 --int8-weights reduced`, ONNX Runtime's `reduce_range`), "
    "which cannot saturate; U8U8 quantisation avoids it too"
)


def judge(
    comparison: ArithmeticComparison, precision: str, weights: Int8Weights, cpu: CpuInt8, engine: str
) -> ArithmeticVerdict:
    """Pass when the deployed kernels agree with the file; otherwise name the most likely cause."""
    minimum = MIN_AGREEMENT.get(precision, MIN_AGREEMENT["int8"])
    passed = comparison.argmax_agreement >= minimum
    cause = remedy = None
    if not passed and weights.can_saturate and cpu.vnni is False:
        cause = (
            f"ONNX Runtime's u8s8 int8 kernels add pairs of products in saturating int16 on x86-64 CPUs "
            f"without VNNI (this machine: {cpu.describe()}), and {weights.beyond} of the file's "
            f"{weights.tensors} int8 weight tensors exceed ±{SATURATION_FREE_WEIGHT} (largest |q| {weights.max_abs}, "
            f"e.g. {weights.example}), so their pair sums can clip. The file is not at fault: this engine on "
            "this hardware computes something else."
        )
        remedy = REMEDY_SATURATION
    elif not passed:
        cause = (
            f"the fused kernels of {engine} round differently from the file's arithmetic beyond rounding "
            f"({cpu.describe()}; {weights.tensors} int8 weight tensors, {weights.beyond} beyond "
            f"±{SATURATION_FREE_WEIGHT}): not the known int16 saturation."
        )
        remedy = (
            "compare with another execution provider or machine; report it with the file and this CPU's flags "
            "(`grep flags /proc/cpuinfo`)"
        )
    return ArithmeticVerdict(
        engine=engine,
        precision=precision,
        cpu=cpu.describe(),
        comparison=comparison,
        min_agreement=minimum,
        int8_weight_tensors=weights.tensors,
        int8_weights_beyond_bound=weights.beyond,
        passed=passed,
        cause=cause,
        remedy=remedy,
    )


def run_both(
    path: Path, feeds: list[dict[str, np.ndarray]], output: str, device: str = "cpu"
) -> tuple[np.ndarray, ...]:
    """Logits of `path` as deployed (on `device`) and as written (CPU), concatenated over feeds."""
    from harden.export.ort_session import ort_session

    deployed = ort_session(path, device=device)
    written = ort_session(path, as_written=True)
    first = np.concatenate([deployed.run([output], feed)[0] for feed in feeds])
    second = np.concatenate([written.run([output], feed)[0] for feed in feeds])
    return first, second


def audit_file(
    path: Path,
    precision: str,
    feeds: list[dict[str, np.ndarray]],
    labels: np.ndarray,
    num_classes: int,
    output: str,
    device: str = "cpu",
    to_label_size: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ArithmeticVerdict:
    """Run `path` both ways on `feeds` and judge the difference (export and verify share this).

    to_label_size: maps logits smaller than the labels (a model with H/4 output) to their size.
    """
    deployed, as_written = run_both(path, feeds, output, device)
    if to_label_size is not None:
        deployed, as_written = to_label_size(deployed), to_label_size(as_written)
    comparison = compare_logits(deployed, as_written, labels, num_classes)
    weights = int8_weights(onnx.load(str(path), load_external_data=False))
    provider = f"ONNX Runtime CUDA ({device})" if device.startswith("cuda") else "ONNX Runtime CPU"
    return judge(comparison, precision, weights, cpu_int8(), f"{provider} ({path.name})")
