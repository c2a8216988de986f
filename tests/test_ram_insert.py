"""insert_ram_: every recognised family converts, identity is exact, MAS/RAD behave in models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harden.errors import InputError
from harden.models import create_model, find_attention, list_models
from harden.ram import RAMConfig, RobustAttentionCore, fixed_rad_seed, insert_ram_, robust_cores, set_rad_seed
from harden.ram.torch_mha import RobustMultiheadAttention

IDENTITY = RAMConfig(mas=False, rad=False)
EXPLICIT = RAMConfig(mas=False, rad=False, temperature=1.0)  # the RAM code path, same maths as vanilla
ATTENTION_MODELS = list_models(has_attention=True)
ATTENTION_TINY = list_models(has_attention=True, tiny=True)


def _image(h: int = 64, w: int = 128) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_insertion_converts_every_attention_layer_and_identity_is_bit_exact(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = _image()
    with torch.no_grad():
        reference = model(x)
    cores = len(find_attention(model))
    report = insert_ram_(model, IDENTITY)
    assert len(report.converted) == cores and not report.skipped and not report.unrecognised
    assert len(robust_cores(model)) == cores
    with torch.no_grad():
        assert torch.equal(model(x), reference)


@pytest.mark.parametrize("name", ATTENTION_TINY)
def test_ram_code_path_matches_vanilla_maths(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = _image()
    with torch.no_grad():
        reference = model(x)
        insert_ram_(model, EXPLICIT)
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)  # SDPA vs explicit softmax


@pytest.mark.parametrize("name", ATTENTION_TINY)
def test_mas_bounds_every_attention_row_in_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    insert_ram_(model, RAMConfig(mas=True, threshold=0.3, rad=False))
    maxima: list[float] = []
    for _, core in robust_cores(model):
        core.register_attention_hook(lambda m, t: maxima.append(t.attention.max().item()))
    with torch.no_grad():
        model(_image() * 50)  # large inputs, peaked attention
    assert maxima and max(maxima) <= 0.3 + 1e-6


@pytest.mark.parametrize("name", ATTENTION_TINY)
def test_rad_seeding_reproducible_fresh_and_distinct_per_call(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    insert_ram_(model, RAMConfig(mas=True, rad=True, drop_p=0.5))
    x = _image()
    layers = len(robust_cores(model))
    masks: list[torch.Tensor] = []
    for _, core in robust_cores(model):
        core.register_attention_hook(lambda m, t: masks.append((t.applied != 0)[0, 0]))
    with torch.no_grad(), fixed_rad_seed(model, 7):
        a = model(x)
        b = model(x)
    with torch.no_grad():
        model(x)  # no seed: fresh draws
    assert torch.equal(a, b)
    first, second, fresh = masks[:layers], masks[layers : 2 * layers], masks[2 * layers :]
    assert all(torch.equal(m1, m2) for m1, m2 in zip(first, second, strict=True))
    assert not any(torch.equal(m1, m3) for m1, m3 in zip(first, fresh, strict=True))
    # within one pass, layers with equal attention shapes still get different masks
    for i, m1 in enumerate(first):
        for m2 in first[i + 1 :]:
            if m1.shape == m2.shape and m1.numel() > 16:
                assert not torch.equal(m1, m2)


def test_rad_is_active_in_eval_and_train_and_seeded_by_torch_manual_seed() -> None:
    model = create_model("segformer_tiny", num_classes=5)
    insert_ram_(model, RAMConfig(mas=False, rad=True, drop_p=0.5))
    x = _image()
    with torch.no_grad():
        for mode in (model.eval, model.train):
            mode()
            torch.manual_seed(1)
            a = model(x)
            torch.manual_seed(1)
            assert torch.equal(a, model(x))
            assert not torch.equal(a, model(x))


def test_seed_tensor_works_like_an_int() -> None:
    model = create_model("segmenter_tiny", num_classes=5).eval()
    insert_ram_(model, RAMConfig())
    x = _image()
    with torch.no_grad():
        set_rad_seed(model, 3)
        a = model(x)
        set_rad_seed(model, torch.tensor(3))
        b = model(x)
        set_rad_seed(model, None)
    assert torch.equal(a, b)


def test_deepcopy_has_its_own_seeds() -> None:
    model = create_model("segformer_tiny", num_classes=5).eval()
    insert_ram_(model, RAMConfig())
    twin = copy.deepcopy(model)
    set_rad_seed(twin, 5)
    assert all(core.seeds.fixed is None for _, core in robust_cores(model))
    with torch.no_grad():
        set_rad_seed(model, 5)
        assert torch.equal(model(_image()), twin(_image()))


def test_temperature_and_learnable_refinements() -> None:
    model = create_model("segformer_tiny", num_classes=5).eval()
    insert_ram_(model, RAMConfig(mas=False, rad=False, temperature=4.0, learnable=True))
    gains = [name for name, _ in model.named_parameters() if name.endswith("logit_gain")]
    assert len(gains) == len(robust_cores(model))
    logits_seen: list[torch.Tensor] = []
    attention_seen: list[torch.Tensor] = []
    _, core = robust_cores(model)[0]

    def keep(m: object, t: object) -> None:
        logits_seen.append(t.logits)  # type: ignore[attr-defined]
        attention_seen.append(t.attention)  # type: ignore[attr-defined]

    core.register_attention_hook(keep)
    model(_image()).sum().backward()
    assert core.logit_gain is not None and core.logit_gain.grad is not None
    torch.testing.assert_close(attention_seen[0], logits_seen[0].softmax(-1))


def test_filter_fn_and_report() -> None:
    model = create_model("segformer_tiny", num_classes=5)
    report = insert_ram_(model, RAMConfig(), filter_fn=lambda m, name: name.startswith("stages.0"))
    assert [n for n, _ in report.converted] == ["stages.0.blocks.0.attn.core"]
    assert len(report.skipped) == 3 and all(reason == "excluded by filter_fn" for _, reason in report.skipped)
    assert "1 attention layers converted, 3 skipped" in report.summary()


class HomeMadeAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return (q @ k.transpose(-1, -2)).softmax(-1) @ v


def test_unrecognised_attention_is_reported_not_silently_skipped() -> None:
    model = nn.Sequential(HomeMadeAttention(), nn.MultiheadAttention(8, 2, batch_first=True))
    report = insert_ram_(model, RAMConfig())
    assert report.unrecognised == [("0", "HomeMadeAttention")]
    assert report.converted == [("1", "torch nn.MultiheadAttention")]
    assert "NOT converted  0  (HomeMadeAttention)" in report.summary()


def test_inserting_twice_is_refused() -> None:
    model = create_model("segformer_tiny", num_classes=5)
    insert_ram_(model, RAMConfig())
    with pytest.raises(InputError, match="already has RAM"):
        insert_ram_(model, RAMConfig())


class MHAModel(nn.Module):
    def __init__(self, batch_first: bool, kdim: int | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attn(q, kv, kv, **kwargs)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "padding"])
def test_multihead_attention_identity_exact_and_ram_path_matches(batch_first: bool, masks: str) -> None:
    torch.manual_seed(0)
    model = MHAModel(batch_first).eval()
    shape = (2, 5, 16) if batch_first else (5, 2, 16)
    q, kv = torch.randn(*shape), torch.randn(*shape)
    kwargs: dict[str, object] = {}
    if masks == "bool":
        kwargs["attn_mask"] = torch.ones(5, 5, dtype=torch.bool).triu(1)
    elif masks == "float":
        kwargs["attn_mask"] = torch.randn(5, 5)
    elif masks == "padding":
        padding = torch.zeros(2, 5, dtype=torch.bool)
        padding[1, 3:] = True
        kwargs["key_padding_mask"] = padding
    with torch.no_grad():
        out, weights = model(q, kv, **kwargs)
        identity = copy.deepcopy(model)
        insert_ram_(identity, IDENTITY)
        out_id, weights_id = identity(q, kv, **kwargs)
        assert torch.equal(out_id, out) and weights_id is not None and torch.equal(weights_id, weights)
        insert_ram_(model, EXPLICIT)
        assert isinstance(model.attn, RobustMultiheadAttention) and isinstance(model.attn, nn.MultiheadAttention)
        out_ram, weights_ram = model(q, kv, **kwargs)
    torch.testing.assert_close(out_ram, out, atol=1e-5, rtol=1e-5)
    assert weights_ram is not None
    torch.testing.assert_close(weights_ram, weights, atol=1e-5, rtol=1e-5)


def test_multihead_attention_keeps_weights_and_bounds_attention() -> None:
    model = MHAModel(batch_first=True, kdim=12)
    original = model.attn.q_proj_weight
    insert_ram_(model, RAMConfig(mas=True, threshold=0.4, rad=False))
    assert model.attn.q_proj_weight is original
    _, weights = model(torch.randn(2, 6, 16) * 30, torch.randn(2, 9, 12) * 30, average_attn_weights=False)
    assert weights is not None and weights.shape == (2, 4, 6, 9)
    assert weights.max() <= 0.4 + 1e-6


def test_multihead_attention_unsupported_options_are_skipped_with_a_reason() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_zero_attn=True))
    report = insert_ram_(model, RAMConfig())
    assert report.converted == [] and "add_zero_attn" in report.skipped[0][1]


transformers = pytest.importorskip("transformers")


def _hf_segformer() -> nn.Module:
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[4, 2],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        num_labels=5,
    )
    torch.manual_seed(0)
    return transformers.SegformerForSemanticSegmentation(config).eval()


def _hf_vit() -> nn.Module:
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    return transformers.ViTModel(config).eval()


def _hf_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize(("build", "size", "layers"), [(_hf_segformer, 64, 2), (_hf_vit, 32, 2)])
def test_huggingface_attention_identity_exact_ram_path_matches_and_mas_bounds(
    build: object, size: int, layers: int
) -> None:
    x = torch.rand(1, 3, size, size)
    model = build()  # type: ignore[operator]
    with torch.no_grad():
        reference = _hf_output(model, x)
        identity = build()  # type: ignore[operator]
        report = insert_ram_(identity, IDENTITY)
        assert len(report.converted) == layers and not report.unrecognised, report.summary()
        assert torch.equal(_hf_output(identity, x), reference)
        explicit = build()  # type: ignore[operator]
        insert_ram_(explicit, EXPLICIT)
        torch.testing.assert_close(_hf_output(explicit, x), reference, atol=1e-5, rtol=1e-4)
        assert model.config._attn_implementation != "harden_ram"  # the model-wide config is untouched
        ram = build()  # type: ignore[operator]
        insert_ram_(ram, RAMConfig(mas=True, threshold=0.3, rad=True))
        seen: list[float] = []
        for _, core in robust_cores(ram):
            assert isinstance(core, RobustAttentionCore)
            core.register_attention_hook(lambda m, t: seen.append(t.attention.max().item()))
        with fixed_rad_seed(ram, 1):
            a = _hf_output(ram, x * 20)
            assert torch.equal(a, _hf_output(ram, x * 20))
    assert len(seen) == 2 * layers and max(seen) <= 0.3 + 1e-6
