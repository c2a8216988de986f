"""Deployed models behind one interface: ONNX Runtime, TensorRT, and PyTorch as the reference.

An `Engine` is a context manager (the session or engine lives inside `with`) that maps images
(B, 3, H, W) float32 in [0, 1] to logits (B, K, H, W) (docs/design.md §2), feeding `rad_seed` when
the graph takes one. `EngineModule` wraps an open engine as an `nn.Module` without gradients,
so score-based attacks (Square, noise) and the evaluation code run on it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harden.errors import InputError
from harden.export.onnx_export import IMAGE, LOGITS, RAD_SEED
from harden.ram import RadSeeds, fixed_rad_seed, has_rad

if TYPE_CHECKING:
    from harden.runtime.interface import ModelInterface


class Engine:
    """Base class. Subclasses open in `__enter__`, close in `__exit__` and implement `_run`."""

    name = "engine"
    takes_seed = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def logits(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Logits of `images` on the CPU as float32; `seed` feeds rad_seed (ignored without one)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if self.takes_seed and seed is None:
            raise InputError(f"{self.name} takes rad_seed: pass a seed for every call")
        return self._run(images.detach().float().cpu().contiguous(), seed)

    def _run(self, images: torch.Tensor, seed: int | None) -> torch.Tensor:
        raise NotImplementedError


# ONNX Runtime's exceptions that mean "this file cannot run this input" (a static shape, a type,
# an op the build lacks), not a bug in harden: exit 2 naming the file
ORT_INPUT_ERRORS = {"InvalidArgument", "InvalidGraph", "NotImplemented", "Fail", "RuntimeException"}


class OnnxRuntimeEngine(Engine):
    """An ONNX file in ONNX Runtime: the CPU provider, or CUDA when onnxruntime-gpu has it.

    Args:
        as_written: run the file's own semantics (no graph optimisation, Q/DQ in float) instead
            of the fused kernels a deployment runs (`harden.export.ort_session`).
    """

    def __init__(
        self, path: Path, device: str = "cpu", *, as_written: bool = False, interface: ModelInterface | None = None
    ) -> None:
        self.path = Path(path)
        self.name = f"onnxruntime:{self.path.name}" + (" (as written)" if as_written else "")
        self.device = device
        self.as_written = as_written
        self.interface = interface
        self._session: Any = None

    def __enter__(self) -> OnnxRuntimeEngine:
        from harden.export.files import load_onnx
        from harden.export.ort_session import ort_session
        from harden.runtime.interface import find_interface

        self.interface = self.interface or find_interface(load_onnx(self.path))
        self._session = ort_session(self.path, as_written=self.as_written, device=self.device)
        self.takes_seed = self.interface.seed is not None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._session = None

    def _run(self, images: torch.Tensor, seed: int | None) -> torch.Tensor:
        if self._session is None or self.interface is None:
            raise RuntimeError("open the engine with `with` before running it")
        if self.interface.batch == 1 and images.shape[0] != 1:  # a static export: one image per call
            return torch.cat([self._run(image, seed) for image in images.split(1)])
        try:
            (logits,) = self._session.run([self.interface.output], self.interface.feed(images, seed))
        except Exception as err:  # ONNX Runtime's own exception types, raised on what the file or input holds
            if type(err).__module__.startswith("onnxruntime") and type(err).__name__ in ORT_INPUT_ERRORS:
                raise InputError(
                    f"{self.path}: ONNX Runtime refused a batch of shape {tuple(images.shape)} "
                    f"({type(err).__name__}: {str(err).strip()[:300]}); check the file's input shape and --image-size"
                ) from err
            raise
        return self.interface.postprocess(torch.from_numpy(logits), (images.shape[-2], images.shape[-1])).float()


class TorchEngine(Engine):
    """The PyTorch model itself: the reference every deployed engine is compared with."""

    def __init__(self, model: nn.Module, name: str = "pytorch") -> None:
        self.model = model.eval()
        self.name = name
        self.takes_seed = has_rad(model)

    def _run(self, images: torch.Tensor, seed: int | None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad(), fixed_rad_seed(self.model, 0 if seed is None else seed):
            return self.model(images.to(device)).float().cpu()


class TensorRTEngine(Engine):
    """A serialized TensorRT engine (needs TensorRT and a CUDA GPU; docs/design.md §7).

    The harden plugins are registered before deserialising, so engines with harden::Mas/Rad load.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = f"tensorrt:{self.path.name}"
        self._engine: Any = None
        self._context: Any = None

    def __enter__(self) -> TensorRTEngine:
        from harden.export.tensorrt import register_plugins, require_tensorrt

        trt = require_tensorrt()
        register_plugins()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise InputError(f"{self.path}: TensorRT cannot deserialize it (built by another TensorRT version?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.takes_seed = RAD_SEED in names
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._context = self._engine = None

    def _run(self, images: torch.Tensor, seed: int | None) -> torch.Tensor:
        stream = torch.cuda.current_stream()  # the current device: verify sets it (cuda:N, LOCAL_RANK)
        image = images.cuda()
        self._context.set_input_shape(IMAGE, tuple(image.shape))
        self._context.set_tensor_address(IMAGE, image.data_ptr())
        if self.takes_seed:
            seed_tensor = torch.tensor(seed, dtype=torch.int64, device="cuda")
            self._context.set_tensor_address(RAD_SEED, seed_tensor.data_ptr())
        logits = torch.empty(tuple(self._context.get_tensor_shape(LOGITS)), device="cuda")
        self._context.set_tensor_address(LOGITS, logits.data_ptr())
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.name}: execution failed")
        stream.synchronize()
        return logits.float().cpu()


def open_engine(path: Path, device: str = "cpu", interface: ModelInterface | None = None) -> Engine:
    """The engine for a deployed file, by its suffix: .onnx → ONNX Runtime, .engine/.plan → TensorRT."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxRuntimeEngine(path, device, interface=interface)
    if path.suffix in (".engine", ".plan"):
        return TensorRTEngine(path)
    raise InputError(f"{path}: unknown deployed format; expected .onnx, .engine or .plan")


class EngineModule(nn.Module):
    """An open engine as an `nn.Module` (no gradients): a fresh rad_seed per call unless one is
    fixed with `harden.ram.fixed_rad_seed`, like a model with RAD."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.seeds = RadSeeds()
        self.calls = 0  # queries made: what a query-based attack spent

    @property
    def drops(self) -> bool:
        return self.engine.takes_seed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        seed = int(self.seeds.start_forward()) if self.engine.takes_seed else None
        self.calls += images.shape[0]
        return self.engine.logits(images, seed).to(images.device)
