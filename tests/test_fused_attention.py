"""The fused RobustAttention kernels and `harden::robust_attention` against the reference ops.

On CPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), with
small tiles so that every shape below has several, ragged tiles; tests marked `gpu` run the
same kernels natively at full sizes and skip where there is no GPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from harden.errors import InputError
from harden.ram import fused_attention, ops

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SEED, COUNTER = 7, 3
# (threshold, p): softmax only, MAS only, RAD only, both (the RAM default).
SETTINGS = [(None, 0.0), (0.3, 0.0), (None, 0.5), (0.3, 0.5)]
# (B, H, Nq, Nk, d): queries ≠ keys both ways, d not a power of two, sizes not multiples of 16.
SHAPES = [(1, 2, 37, 29, 20), (2, 1, 16, 50, 8)]


def reference(q, k, v, threshold, p, seed=SEED, counter=COUNTER):  # type: ignore[no-untyped-def]
    """The unfused computation, written with the public ops (what RobustAttentionCore does)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    attention = torch.ops.harden.mas(logits, threshold) if threshold is not None else logits.softmax(-1)
    if p > 0:
        attention = torch.ops.harden.rad(attention, torch.tensor(seed), counter, p)
    return attention @ v


def fused(q, k, v, threshold, p, seed=SEED, counter=COUNTER):  # type: ignore[no-untyped-def]
    out, _ = torch.ops.harden.robust_attention(q, k, v, q.shape[-1] ** -0.5, threshold, torch.tensor(seed), counter, p)
    return out


def qkv(shape, dtype=torch.float32, device="cpu", requires_grad=False):  # type: ignore[no-untyped-def]
    b, h, nq, nk, d = shape
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype) for n in (nq, nk, nk))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("threshold", "p"), SETTINGS)
def test_fused_forward_and_gradients_match_the_reference_ops(shape, threshold, p):
    q, k, v = qkv(shape, requires_grad=True)
    expected = reference(q, k, v, threshold, p)
    out = fused(q, k, v, threshold, p)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)

    grad = torch.randn_like(out)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    for name, got, want in zip("qkv", grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=5e-6, rtol=1e-5, msg=f"d{name} differs")


@needs_triton
@pytest.mark.parametrize(("seed", "counter"), [(0, 0), (-5, 7), (2**62, 2**31 - 2)])
def test_fused_rad_drops_exactly_the_reference_elements(seed, counter):
    """With V = identity the output IS the applied attention matrix, so its zeros are RAD's mask."""
    b, h, nq, nk = 2, 2, 19, 24
    q, k, _ = qkv((b, h, nq, nk, nk))
    v = torch.eye(nk).expand(b, h, nk, nk).contiguous()
    out = fused(q, k, v, 0.3, 0.5, seed, counter)
    expected = reference(q, k, v, 0.3, 0.5, seed, counter)
    assert torch.equal(out == 0, expected == 0)
    assert 0.4 < (expected == 0).float().mean() < 0.6


@needs_triton
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_fused_half_precision_follows_the_fp32_reference(dtype, atol):
    q, k, v = qkv(SHAPES[0], requires_grad=True)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fused(*low, 0.3, 0.5)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference(q, k, v, 0.3, 0.5), atol=atol, rtol=0)
    out.float().sum().backward()
    reference(q, k, v, 0.3, 0.5).sum().backward()
    for low_t, t in zip(low, (q, k, v), strict=True):
        assert low_t.grad is not None and t.grad is not None
        torch.testing.assert_close(low_t.grad.float(), t.grad, atol=10 * atol, rtol=0.05)


@needs_triton
def test_fused_log_sum_exp_is_that_of_the_mas_logits():
    q, k, v = qkv((1, 1, 5, 9, 16))
    _, lse = torch.ops.harden.robust_attention(q, k, v, 0.25, 0.3, torch.tensor(0), 0, 0.0)
    z = torch.nn.functional.softsign((q * 0.25) @ k.transpose(-2, -1)) * ops.mas_gain(0.3, 9)
    torch.testing.assert_close(lse, z.logsumexp(-1), atol=1e-6, rtol=1e-6)


@needs_triton
def test_op_registration_passes_opcheck():
    q, k, v = qkv((1, 2, 9, 17, 16), requires_grad=True)
    torch.library.opcheck(torch.ops.harden.robust_attention.default, (q, k, v, 0.25, 0.3, torch.tensor(3), 1, 0.5))


@pytest.mark.parametrize("threshold", [0.3, None])
def test_without_triton_the_op_runs_the_reference_composition(monkeypatch, threshold):
    monkeypatch.setattr(fused_attention, "runs_triton", lambda device: False)
    q, k, v = qkv(SHAPES[0], requires_grad=True)
    out = fused(q, k, v, threshold, 0.5)
    assert torch.equal(out, reference(q, k, v, threshold, 0.5))
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = torch.autograd.grad(reference(q, k, v, threshold, 0.5).sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


@needs_triton
def test_fused_op_refuses_a_threshold_that_bounds_nothing():
    q, k, v = qkv((1, 1, 4, 3, 16))
    with pytest.raises(InputError, match="threshold"):
        fused(q, k, v, 0.2, 0.0)


@needs_triton
def test_a_ram_model_gives_the_same_output_fused_and_explicit(monkeypatch):
    """The model-level switch: every RAD call keeps its counter, temperature folds into the scale."""
    from harden.models import create_model
    from harden.ram import RAMConfig, insert_ram_, set_rad_seed
    from harden.ram.robust_attention import RobustAttentionCore

    model = create_model("segformer_tiny", num_classes=5).eval()
    insert_ram_(model, RAMConfig(temperature=2.0))
    set_rad_seed(model, 11)
    image = torch.rand(1, 3, 64, 128)
    explicit = model(image)
    calls = []

    def fused_path(self, q, bias, mask):  # type: ignore[no-untyped-def]
        calls.append(q.shape)
        return bias is None and mask is None

    monkeypatch.setattr(RobustAttentionCore, "takes_fused_ram_path", fused_path)
    torch.testing.assert_close(model(image), explicit, atol=1e-5, rtol=1e-5)
    assert len(calls) == len([m for m in model.modules() if isinstance(m, RobustAttentionCore)])


def test_cpu_tensors_take_the_explicit_path():
    from harden.ram import RAMConfig
    from harden.ram.robust_attention import RadSeeds, RobustAttentionCore

    core = RobustAttentionCore(None, RAMConfig(), RadSeeds())
    assert not core.takes_fused_ram_path(torch.zeros(1, 1, 2, 16), None, None)


# ---- on a GPU: full sizes, every dtype, up to 16k keys -------------------------------------------------


@gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 8, 1024, 1024, 64), (1, 8, 1000, 4099, 64), (1, 2, 333, 77, 40)])
def test_gpu_fused_matches_the_reference(dtype, shape):
    q, k, v = qkv(shape, dtype=torch.float32, device="cuda", requires_grad=True)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fused(*low, 0.3, 0.5)
    expected = reference(q, k, v, 0.3, 0.5)
    atol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)
    grad = torch.randn_like(expected)
    grads = torch.autograd.grad(out, low, grad.to(dtype))
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.float(), want, atol=10 * atol, rtol=0.05)


@gpu
@needs_gpu
@needs_triton
def test_gpu_fused_handles_16k_keys_without_the_matrix():
    q, k, v = qkv((1, 8, 16384, 16384, 64), dtype=torch.bfloat16, device="cuda", requires_grad=True)
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    out = fused(q, k, v, 0.3, 0.5)
    out.sum().backward()
    matrix_bytes = 8 * 16384 * 16384 * 2
    assert torch.cuda.max_memory_allocated() - start < matrix_bytes / 8
    assert torch.isfinite(q.grad).all()  # type: ignore[arg-type]


@needs_triton
@pytest.mark.parametrize(("threshold", "p"), [(0.3, 0.5), (None, 0.0)])
def test_the_deployment_kernel_equals_the_training_kernel(threshold, p):
    """`infer` (the TensorRT plugin's kernel, attributes compiled in) computes `forward`'s output."""
    from harden.ram.triton_attention import RamArithmetic, attention_forward, attention_infer

    q, k, v = qkv(SHAPES[1])
    ram = RamArithmetic.of(keys=k.shape[-2], scale=0.3, threshold=threshold, counter=4, p=p)
    seed = torch.tensor(-9)
    expected, _ = attention_forward(q, k, v, seed, ram)
    assert torch.equal(attention_infer(q, k, v, seed, ram), expected)


# Compiled for a Hopper GPU (sm_90, the H100/H200) with Triton's own compiler: no GPU needed, but
# not in the interpreter, so in a subprocess without TRITON_INTERPRET. The interpreter checks the
# arithmetic; this checks that the same source compiles to PTX, which the interpreter never does.
COMPILE_FOR_HOPPER = r"""
import sys, torch, triton
from triton.backends.compiler import GPUTarget
from harden.ram import _triton_attention_kernels as kernels
from harden.ram.triton_attention import RamArithmetic, compile_deployment_kernel, _compile_settings, Tiles

hopper = GPUTarget("cuda", 90, 32)
ram = RamArithmetic.of(keys=1024, scale=0.125, threshold=0.3, counter=2, p=0.5)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    compiled = compile_deployment_kernel(ram, 64, dtype, target=hopper)
    print("infer", dtype, compiled.metadata.name, len(compiled.asm["ptx"]))
ptr = "*bf16"
numbers = {"SEED": "*i64", "counter": "i32", "NQ": "i32", "NK": "i32", "D": "i32",
           "scale": "fp32", "gain": "fp32", "bound": "i64", "keep_scale": "fp32"}
floats = {"LSE", "DELTA"}  # float32 whatever the attention's dtype
for name in ("forward", "backward_keys", "backward_queries"):
    fn = getattr(kernels, name)
    settings = _compile_settings(ram, 64, torch.bfloat16, False, Tiles())
    options = {k: settings.pop(k) for k in ("num_warps", "num_stages")}
    signature = {}
    for arg in fn.arg_names:
        if arg in settings:
            signature[arg] = "constexpr"
        elif arg in numbers:
            signature[arg] = numbers[arg]
        else:
            signature[arg] = "*fp32" if arg in floats else ptr
    compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=settings),
                              target=hopper, options=options)
    print(name, compiled.metadata.name, len(compiled.asm["ptx"]))
"""


@needs_triton
def test_every_kernel_compiles_to_ptx_for_hopper():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["infer"] * 3 + ["forward", "backward_keys", "backward_queries"]
