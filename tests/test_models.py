import pytest
import torch

from harden.errors import InputError
from harden.models import AttentionCore, create_model, find_attention, list_models, model_entry
from harden.models.swin import shifted_window_mask, window_partition

TINY = list_models(tiny=True)
ATTENTION_TINY = list_models(tiny=True, has_attention=True)


def test_registry_covers_the_families_of_the_papers():
    families = {model_entry(n).family for n in list_models()}
    assert families == {"segformer", "segmenter", "nonlocal", "swin", "pspnet", "deeplabv3"}
    for family in families:
        sizes = {model_entry(n).tiny for n in list_models() if model_entry(n).family == family}
        assert sizes == {True, False}, f"{family} needs a tiny and a paper-sized configuration"


@pytest.mark.parametrize("name", TINY)
def test_logits_at_input_resolution_for_odd_sizes(name):
    model = create_model(name, num_classes=5).eval()
    x = torch.rand(2, 3, 75, 101)
    logits, features = model.forward_with_features(x)
    assert logits.shape == (2, 5, 75, 101)
    assert features.dim() == 4 and features.shape[0] == 2
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TINY)
def test_input_gradients_flow(name):
    model = create_model(name, num_classes=3).eval()
    x = torch.rand(1, 3, 64, 96, requires_grad=True)
    model(x).logsumexp(1).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TINY)
def test_normalisation_happens_inside_the_model(name):
    model = create_model(name, num_classes=3).eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


def test_attention_models_expose_their_attention_and_cnns_do_not():
    for name in TINY:
        cores = find_attention(create_model(name, num_classes=3))
        assert bool(cores) == model_entry(name).has_attention, name


@pytest.mark.parametrize("name", ATTENTION_TINY)
def test_attention_hooks_see_normalised_rows_and_leave_outputs_unchanged(name):
    model = create_model(name, num_classes=3).eval()
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        reference = model(x)
    seen = []
    handles = [core.register_attention_hook(lambda m, t: seen.append(t.attention)) for _, core in find_attention(model)]
    with torch.no_grad():
        hooked = model(x)
    for h in handles:
        h.remove()
    assert len(seen) >= len(handles)
    for attn in seen:
        assert attn.dim() == 4
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(hooked, reference, atol=1e-4, rtol=1e-4)


def test_spatial_reduction_gives_fewer_keys_than_queries():
    model = create_model("segformer_tiny", num_classes=3).eval()
    shapes = []
    _, first = find_attention(model)[0]
    first.register_attention_hook(lambda m, t: shapes.append(t.attention.shape))
    model(torch.rand(1, 3, 64, 128))
    _, _, queries, keys = shapes[0]
    assert queries == 16 * 32 and keys == 2 * 4  # stage 1 at 1/4, keys reduced 8× per side


def test_attention_core_fused_path_equals_explicit_softmax_with_bias_and_mask():
    core = AttentionCore()
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    bias = torch.randn(1, 3, 5, 7)
    mask = torch.rand(2, 1, 5, 7) > 0.3
    mask[..., 0] = True  # every query keeps at least one key
    fused = core(q, k, v, bias=bias, mask=mask)
    explicit = core.attention(q, k, bias, mask) @ v
    logits = (q @ k.transpose(-1, -2)) / 2 + bias
    direct = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, direct, atol=1e-5, rtol=1e-5)


def test_hook_removal_restores_fused_path():
    core = AttentionCore()
    calls = []
    handle = core.register_attention_hook(lambda m, a: calls.append(1))
    q = torch.randn(1, 1, 3, 2)
    core(q, q, q)
    handle.remove()
    core(q, q, q)
    assert calls == [1]


def test_shifted_window_mask_separates_regions():
    mask = shifted_window_mask(8, 8, 4, 2, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert mask[0].all()  # the top-left window holds a single region
    assert not mask[-1].all()  # the bottom-right window mixes four regions
    assert torch.equal(mask, mask.transpose(1, 2))
    assert window_partition(torch.arange(64.0).view(1, 8, 8, 1), 4).shape == (4, 16, 1)


@pytest.mark.parametrize("name", list_models(tiny=False))
def test_paper_sized_models_build_with_plausible_parameter_counts(name):
    model = create_model(name, num_classes=19)
    params = sum(p.numel() for p in model.parameters())
    assert 2e6 < params < 60e6
    if name == "segformer_b0":
        assert abs(params - 3.7e6) < 0.1e6  # MiT-B0 + decoder as published


def test_unknown_model_and_bad_options_are_input_errors():
    with pytest.raises(InputError, match="unknown model"):
        create_model("resnet9000", 3)
    with pytest.raises(InputError, match="does not accept"):
        create_model("segformer_tiny", 3, wings=2)


def test_segmenter_interpolates_position_embedding_to_other_sizes():
    model = create_model("segmenter_tiny", num_classes=3).eval()
    assert model(torch.rand(1, 3, 96, 96)).shape == (1, 3, 96, 96)
