"""The Triton kernels behind the TensorRT plugins, against the PyTorch ops; the TensorRT gate.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), on a GPU
natively; either way RAD's mask must be the PyTorch op's, bit for bit.
"""

import importlib.util

import pytest
import torch

from harden.errors import InputError
from harden.ram import ops  # noqa: F401  (registers torch.ops.harden.*)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@needs_triton
@pytest.mark.parametrize("keys", [7, 64, 100])
def test_mas_kernel_matches_the_op(keys):
    from harden.export.triton_kernels import mas_triton

    logits = (torch.randn(2, 3, 5, keys) * 4).to(DEVICE)
    out = mas_triton(logits, 0.3)
    torch.testing.assert_close(out, torch.ops.harden.mas(logits, 0.3), atol=2e-6, rtol=1e-5)
    assert out.max() <= 0.3 + 1e-6


@needs_triton
@pytest.mark.parametrize(("seed", "counter", "p"), [(0, 0, 0.5), (-5, 7, 0.3), (2**62, 2**31 - 2, 0.9)])
def test_rad_kernel_is_bit_identical_to_the_op(seed, counter, p):
    from harden.export.triton_kernels import rad_triton

    attention = torch.rand(2, 3, 50, 37).softmax(-1).to(DEVICE)
    out = rad_triton(attention, seed, counter, p, block=256)  # several blocks, a ragged last one
    assert torch.equal(out, torch.ops.harden.rad(attention, torch.tensor(seed), counter, p))


@needs_triton
def test_mas_kernel_refuses_a_threshold_that_bounds_nothing():
    from harden.export.triton_kernels import mas_triton

    with pytest.raises(InputError, match="threshold"):
        mas_triton(torch.randn(1, 1, 2, 3).to(DEVICE), 0.2)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_without_tensorrt_the_engine_path_says_what_to_install():
    from harden.export.tensorrt import require_tensorrt

    with pytest.raises(InputError, match=r"NVIDIA GPU.*pip install 'harden-seg\[trt\]'"):
        require_tensorrt()
