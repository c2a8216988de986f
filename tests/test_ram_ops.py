"""harden::mas and harden::rad: the maths of eq. (4) and (16), the bound, custom-op registrations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harden.errors import InputError
from harden.ram import counter_rng
from harden.ram.ops import mas, rad

# float32 rounding of exp and of the row sum: the bound holds to this absolute tolerance
# (worst excess measured over ±1e-3…3e38 logits, N = 2…1024: 2.4e-7, two float32 ulps).
MAS_BOUND_TOLERANCE = 1e-6

LOGIT_VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
    st.sampled_from([0.0, 1e-30, -1e-30, 1e6, -1e6, 3e38, -3e38, 1e-3]),
)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 300),
    threshold_fraction=st.floats(0.001, 0.999),
    data=st.data(),
)
def test_mas_rows_never_exceed_threshold(n: int, threshold_fraction: float, data: st.DataObject) -> None:
    low = 1.0 / n
    threshold = low + (1.0 - low) * threshold_fraction
    if not low < threshold < 1.0:
        return
    rows = data.draw(st.integers(1, 4))
    values = data.draw(st.lists(LOGIT_VALUES, min_size=rows * n, max_size=rows * n))
    logits = torch.tensor(values, dtype=torch.float32).view(rows, n)
    attention = mas(logits, threshold)
    assert torch.isfinite(attention).all()
    assert attention.max().item() <= threshold + MAS_BOUND_TOLERANCE
    torch.testing.assert_close(attention.sum(-1), torch.ones(rows), atol=1e-5, rtol=0)


def test_mas_reaches_the_bound_for_one_dominant_key() -> None:
    logits = torch.full((1, 50), -1e6)
    logits[0, 7] = 1e6
    assert mas(logits, 0.3)[0, 7].item() == pytest.approx(0.3, abs=1e-5)


def test_mas_equals_eq4_with_its_constant_term() -> None:
    """softmax(½(A/(1+|A|)+1)·log((N−1)T/(1−T))), written out literally, in float64."""
    logits = torch.randn(2, 3, 6, 11, dtype=torch.float64) * 5
    n, t = 11, 0.3
    literal = (0.5 * (logits / (1 + logits.abs()) + 1) * math.log((n - 1) * t / (1 - t))).softmax(-1)
    torch.testing.assert_close(mas(logits, t), literal, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("threshold", "n"), [(0.3, 3), (0.25, 4), (1.0, 8), (0.0, 8), (float("nan"), 8), (1.5, 8)])
def test_mas_refuses_threshold_outside_open_interval(threshold: float, n: int) -> None:
    with pytest.raises(InputError, match=r"MAS threshold must lie in \(1/"):
        mas(torch.zeros(2, n), threshold)


def test_mas_with_keep_mask_zeroes_masked_keys_and_bounds_each_row_by_its_own_keys() -> None:
    logits = torch.randn(2, 4, 16) * 100
    mask = torch.ones(1, 4, 16, dtype=torch.bool)
    mask[0, 1, 8:] = False  # row 1 may attend to 8 keys
    mask[0, 2, 2:] = False  # row 2 to 2 keys: 1/2 > T, no bound possible → uniform
    attention = mas(logits, 0.3, mask)
    assert (attention[:, ~mask[0]] == 0).all()
    assert attention[:, :2].max() <= 0.3 + MAS_BOUND_TOLERANCE
    torch.testing.assert_close(attention[:, 2, :2], torch.full((2, 2), 0.5))
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4))


def test_mas_gradients_match_float64_finite_differences() -> None:
    logits = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: mas(a, 0.4), (logits,))
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    mask[..., 3:] = False
    assert torch.autograd.gradcheck(lambda a: mas(a, 0.4, mask), (logits,))


def test_rad_drops_at_rate_p_and_keeps_the_mean() -> None:
    attention = torch.full((4, 8, 64, 64), 1.0 / 64)
    seed = torch.tensor(3)
    out = rad(attention, seed, 0, 0.5)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 2.0 / 64))
    assert abs(out.mean().item() - attention.mean().item()) < 0.01 * attention.mean().item()


def test_rad_mask_is_the_specified_one() -> None:
    attention = torch.rand(2, 3, 5, 7)
    out = rad(attention, torch.tensor(-77), 5, 0.3)
    expected_keep = counter_rng.keep_mask_numpy(-77, 5, (2, 3, 5, 7), 0.3)
    np.testing.assert_array_equal((out != 0).numpy(), expected_keep)
    scale = np.float32(counter_rng.keep_scale(0.3))
    np.testing.assert_array_equal(out.numpy(), np.where(expected_keep, attention.numpy() * scale, 0))


def test_rad_is_reproducible_per_seed_and_counter_and_differs_otherwise() -> None:
    attention = torch.rand(1, 2, 16, 16)
    a = rad(attention, torch.tensor(1), 0, 0.5)
    assert torch.equal(a, rad(attention, torch.tensor(1), 0, 0.5))
    assert not torch.equal(a, rad(attention, torch.tensor(2), 0, 0.5))
    assert not torch.equal(a, rad(attention, torch.tensor(1), 1, 0.5))


def test_rad_zero_p_is_identity_and_gradient_uses_the_same_mask() -> None:
    attention = torch.rand(1, 1, 8, 8, requires_grad=True)
    assert torch.equal(rad(attention, torch.tensor(0), 0, 0.0), attention)
    out = rad(attention, torch.tensor(9), 2, 0.5)
    out.sum().backward()
    assert attention.grad is not None
    np.testing.assert_array_equal(attention.grad.numpy(), (out != 0).float().numpy() * 2.0)
    double = torch.rand(2, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: rad(a, torch.tensor(4), 7, 0.3), (double,))


@pytest.mark.parametrize("masked", [False, True])
def test_custom_ops_pass_opcheck(masked: bool) -> None:
    logits = torch.randn(2, 3, 5, 7, requires_grad=True)
    mask = torch.ones(1, 1, 5, 7, dtype=torch.bool) if masked else None
    if mask is not None:
        mask[..., 4:] = False
    torch.library.opcheck(torch.ops.harden.mas.default, (logits, 0.3, mask))
    attention = logits.softmax(-1).detach().requires_grad_()
    torch.library.opcheck(torch.ops.harden.rad.default, (attention, torch.tensor(5), 3, 0.5))


def test_custom_ops_compile_without_graph_breaks() -> None:
    logits = torch.randn(2, 2, 8, 8)
    seed = torch.tensor(11)

    def ram(a: torch.Tensor) -> torch.Tensor:
        return rad(mas(a, 0.3), seed, 0, 0.5)

    compiled = torch.compile(ram, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(logits), ram(logits))


def test_torch_export_sees_one_node_per_mas_and_rad_call() -> None:
    from harden.models import create_model
    from harden.ram import RAMConfig, fixed_rad_seed, insert_ram_, robust_cores

    model = create_model("segformer_tiny", num_classes=5).eval()
    insert_ram_(model, RAMConfig())
    with fixed_rad_seed(model, 3):
        program = torch.export.export(model, (torch.rand(1, 3, 64, 128),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    layers = len(robust_cores(model))
    assert targets.count("harden.mas.default") == layers
    assert targets.count("harden.rad.default") == layers
