"""TensorRT: strongly typed engines from our ONNX files, MAS/RAD as Python plugins. Optional.

TensorRT cannot be installed on CPU machines (docs/design.md §7), so this file stays thin: every
import of `tensorrt` is lazy, `require_tensorrt` says what to install and where, and the
plugins are small wrappers around the Triton kernels of `harden.export.triton_kernels`, which are
tested on their own (interpreter mode on CPU, natively on a GPU).

How the pieces meet: our ONNX nodes are `harden::Mas`, `harden::MaskedMas`, `harden::Rad` and,
in the copy the engine is built from, `harden::RobustAttention` (`harden.export.fuse_attention`), all
with `plugin_namespace="harden"`; TensorRT's parser finds no builtin importer for those op types
and, since 10.7, prefers a registered plugin of the same name over the node's function body.
The engine is built strongly typed (TensorRT 11 has no fp16/int8 builder flags): precision
comes from the ONNX variant it is given.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Final

from harden import install_hint
from harden._io import atomic_path
from harden.errors import InputError
from harden.export.trt_options import TrtBuildOptions

INSTALL_HINT: Final = (
    "TensorRT is not installed. Engines need a Linux machine with an NVIDIA GPU and CUDA 12: there run "
    f"`{install_hint('trt')}` (tensorrt >= 10.9 and triton). This machine can still export and check the "
    "ONNX files (`harden export RUN_DIR --out DIR` without --trt) and build the engine on the GPU machine."
)


def require_tensorrt() -> Any:
    """The `tensorrt` module, or an InputError (exit code 2) saying how to get it."""
    try:
        import tensorrt
    except ImportError as err:
        raise InputError(INSTALL_HINT) from err
    return tensorrt


@functools.cache
def register_plugins() -> None:
    """Register harden::Mas, harden::Rad and harden::RobustAttention with TensorRT (once).

    harden::MaskedMas (Swin's shifted windows) has no plugin yet: TensorRT builds its function
    body from standard ops.
    """
    _register_robust_attention()
    require_tensorrt()
    import tensorrt.plugin as trtp
    import torch

    from harden.export.triton_kernels import mas_triton, rad_triton

    @trtp.register("harden::Mas")
    def _mas_desc(logits: trtp.TensorDesc, threshold: float) -> trtp.TensorDesc:
        return logits.like()

    @trtp.impl("harden::Mas")
    def _mas_impl(logits: trtp.Tensor, threshold: float, outputs: tuple[trtp.Tensor], stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            result = mas_triton(torch.as_tensor(logits, device="cuda"), threshold)
            torch.as_tensor(outputs[0], device="cuda").copy_(result)

    @trtp.register("harden::Rad")
    def _rad_desc(attention: trtp.TensorDesc, seed: trtp.TensorDesc, counter: int, p: float) -> trtp.TensorDesc:
        return attention.like()

    @trtp.impl("harden::Rad")
    def _rad_impl(
        attention: trtp.Tensor, seed: trtp.Tensor, counter: int, p: float, outputs: tuple[trtp.Tensor], stream: int
    ) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            seed_value = int(torch.as_tensor(seed, device="cuda").item())
            result = rad_triton(torch.as_tensor(attention, device="cuda"), seed_value, counter, p)
            torch.as_tensor(outputs[0], device="cuda").copy_(result)


def _register_robust_attention() -> None:
    """harden::RobustAttention as an AOT plugin: the fused Triton kernel `infer`, compiled to PTX
    with the node's attributes built in, launched by TensorRT with no Python at run time."""
    import tensorrt.plugin as trtp
    import torch

    from harden.ram.triton_attention import RamArithmetic, Tiles, compile_deployment_kernel

    trt = require_tensorrt()
    dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}

    @trtp.register("harden::RobustAttention")
    def _desc(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, seed: trtp.TensorDesc,
        scale: float, threshold: float, counter: int, p: float,
    ) -> trtp.TensorDesc:  # fmt: skip
        return q.like()

    @trtp.aot_impl("harden::RobustAttention")
    def _aot(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, seed: trtp.TensorDesc,
        scale: float, threshold: float, counter: int, p: float, outputs: tuple[trtp.TensorDesc], tactic: int,
    ) -> tuple[str, str, Any, Any]:  # fmt: skip
        keys, head_dim = k.shape_expr[2], q.shape_expr[3]
        if not (keys.is_constant and head_dim.is_constant):
            raise InputError(
                "the RobustAttention plugin needs a fixed key count and head size: build with a fixed image size"
            )
        ram = RamArithmetic.of(keys=keys.constant_value(), scale=scale, threshold=threshold, counter=counter, p=p)
        tiles = Tiles()
        compiled = compile_deployment_kernel(ram, head_dim.constant_value(), dtypes[q.dtype], tiles=tiles)
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.cdiv(q.shape_expr[2], tiles.block_m)
        params.grid_y = q.shape_expr[0] * q.shape_expr[1]
        params.block_x = compiled.metadata.num_warps * 32
        params.shared_mem = compiled.metadata.shared
        sizes = trtp.SymIntExprs(2)  # the kernel's integer arguments between inputs and outputs: NQ, NK
        sizes[0], sizes[1] = trtp.SymInt32(q.shape_expr[2]), trtp.SymInt32(keys)
        return compiled.metadata.name, compiled.asm["ptx"], params, sizes


def build_engine(onnx_path: Path, engine_path: Path, options: TrtBuildOptions) -> Path:
    """Parse `onnx_path` with the harden plugins registered and write a strongly typed engine.

    The engine is built from a copy whose RAM attention chains are fused into
    harden::RobustAttention nodes (`harden.export.fuse_attention`); the file itself is unchanged.
    The optimisation profile, workspace and timing cache come from `options`; the timing cache
    is read before the build when it exists and written back after it.
    """
    from harden.export.files import load_onnx
    from harden.export.fuse_attention import fuse_robust_attention_

    trt = require_tensorrt()
    register_plugins()
    model = load_onnx(onnx_path)  # refuses external data outside the file's directory
    fuse_robust_attention_(model)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    cache_path = options.cache_for(engine_path)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    image = network.get_input(0)
    _, channels, height, width = image.shape
    options.shapes.check_static((height, width) if height > 0 and width > 0 else None)
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, *options.shapes.profile(channels))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path
