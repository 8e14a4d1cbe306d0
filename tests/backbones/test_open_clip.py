"""The ``open_clip`` family on tiny random-init open_clip vision towers; PackedAttention against torch's MHA."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from fixtures.families import OPEN_CLIP_INPUT, write_open_clip
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from open_clip.transformer import VisionTransformer
from torch import nn

from medpeft.backbones.base import CLIP_MEAN_STD, CapabilityError, Projection, describe
from medpeft.backbones.library import build_open_clip
from medpeft.backbones.open_clip import PackedAttention
from medpeft.errors import ConfigError
from tests.backbones.contract import (
    check_masked_stream,
    check_native_checkpoint_loads,
    check_perturbation_reaches_output,
    check_prepare,
    check_token_feature_map,
    check_token_stream,
    projection_linears,
)

WIDTH, EMBED = 32, 16
TINY = dict(layers=2, width=WIDTH, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32)


def _tower(**fields) -> Callable[[], nn.Module]:
    """A tower built the way open_clip builds ``model.visual`` from a config."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return _build_vision_tower(EMBED, CLIPVisionCfg(**TINY, **fields)).eval()

    return build


def _direct() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, width=WIDTH, layers=2, heads=2, mlp_ratio=2.0, output_dim=EMBED
    ).eval()


BUILDERS = {
    "clip": _tower(),
    "layer_scale": _tower(ls_init_value=0.1),
    "avg_pool_ln_after": _tower(pool_type="avg", final_ln_after_pool=True),
    "attentional_pool_tokens": _tower(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2,
                                      output_tokens=True),
    "direct": _direct,
}
MODELS = list(BUILDERS)
BLOCK = "transformer.resblocks.1"


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODELS)
def test_prepare_keeps_outputs_keys_and_calls_every_projection(name, images):
    backbone = check_prepare(BUILDERS[name], images)
    assert all(isinstance(block.attn, PackedAttention) for block in backbone.blocks())


@pytest.mark.parametrize("name", MODELS)
def test_an_open_clip_checkpoint_loads_strictly_after_prepare(name, images):
    check_native_checkpoint_loads(BUILDERS[name], images)


@pytest.mark.parametrize("name", MODELS)
def test_token_stream_pools_to_the_tower_output(name, images):
    model = BUILDERS[name]()
    backbone = describe(model)
    output = model(images)
    torch.testing.assert_close(backbone.features(images), output[0] if isinstance(output, tuple) else output)
    check_token_stream(backbone, images, patches=16)
    backbone.prepare()
    check_token_stream(backbone, images, patches=16)


@pytest.mark.parametrize("name", MODELS)
def test_feature_maps_but_no_attention_maps(name, images):
    backbone = describe(BUILDERS[name]())
    check_token_feature_map(backbone, images, grid=(4, 4))
    assert backbone.pools_class_token == (name in ("clip", "layer_scale", "direct"))
    with pytest.raises(CapabilityError, match=r"^VisionTransformer \(open_clip\) has no attention maps$"):
        backbone.attention_weights()


def test_roles_are_in_proj_rows_out_proj_and_the_mlp():
    backbone = describe(BUILDERS["clip"]())
    backbone.prepare()
    assert (backbone.family, backbone.width, backbone.num_prefix_tokens) == ("open_clip", EMBED, 1)
    assert backbone.attention(1) == {
        "q": Projection(f"{BLOCK}.attn.in_proj", (0, WIDTH)),
        "k": Projection(f"{BLOCK}.attn.in_proj", (WIDTH, 2 * WIDTH)),
        "v": Projection(f"{BLOCK}.attn.in_proj", (2 * WIDTH, 3 * WIDTH)),
        "out": Projection(f"{BLOCK}.attn.out_proj"),
    }
    assert backbone.mlp(1) == {"fc1": Projection(f"{BLOCK}.mlp.c_fc"), "fc2": Projection(f"{BLOCK}.mlp.c_proj")}


def test_torch_attention_never_calls_out_proj_but_prepared_attention_does(images):
    backbone = describe(BUILDERS["clip"]())
    before = backbone.features(images)
    calls = []
    backbone.module.get_submodule(f"{BLOCK}.attn.out_proj").register_forward_hook(lambda *_: calls.append(1))
    torch.testing.assert_close(backbone.features(images), before, atol=0, rtol=0)
    assert calls == []  # an adapter wrapped here would be dead weight without prepare()
    backbone.prepare()
    for linear in ("in_proj", "out_proj"):
        check_perturbation_reaches_output(backbone, images, f"{BLOCK}.attn.{linear}")


def test_gradients_reach_the_attention_linears(images):
    backbone = describe(BUILDERS["clip"]())
    backbone.prepare()
    backbone.features(images).square().sum().backward()
    attention = backbone.module.get_submodule(f"{BLOCK}.attn")
    assert attention.in_proj.weight.grad.abs().sum() > 0 and attention.out_proj.weight.grad.abs().sum() > 0


def test_custom_attention_blocks_offer_out_proj_only(images):
    build = _tower(qk_norm=True)  # open_clip's own Attention reads in_proj_weight itself
    backbone = check_prepare(build, images)
    assert backbone.attention(0) == {"out": Projection("transformer.resblocks.0.attn.out_proj")}
    assert len(projection_linears(backbone)) == 2 * 3


def _mha_pair(**options) -> tuple[nn.MultiheadAttention, PackedAttention]:
    torch.manual_seed(0)
    torch_attention = nn.MultiheadAttention(WIDTH, 4, batch_first=True, **options)
    with torch.no_grad():
        torch_attention.in_proj_bias.normal_()
        torch_attention.out_proj.bias.normal_()
    return torch_attention, PackedAttention(copy.deepcopy(torch_attention))


def _masks(length: int) -> dict[str, torch.Tensor | None]:
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    return {
        "none": None,
        "bool": causal,
        "float": torch.zeros(length, length).masked_fill(causal, float("-inf")),
        "per_head": torch.randn(2 * 4, length, length),
    }


@pytest.mark.parametrize("mask", ["none", "bool", "float", "per_head"])
@pytest.mark.parametrize("training", [False, True])
def test_packed_attention_equals_torch_attention(mask, training):
    torch_attention, packed = _mha_pair()
    torch_attention.train(training)
    packed.train(training)
    x = torch.randn(2, 5, WIDTH)
    attn_mask = _masks(5)[mask]
    expected = torch_attention(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
    torch.testing.assert_close(packed(x, x, x, need_weights=False, attn_mask=attn_mask)[0], expected,
                               atol=1e-6, rtol=1e-5)


def test_packed_cross_attention_equals_torch_attention():
    torch_attention, packed = _mha_pair()
    query, context = torch.randn(2, 3, WIDTH), torch.randn(2, 7, WIDTH)
    expected = torch_attention(query, context, context, need_weights=False)[0]
    torch.testing.assert_close(packed(query, context, context)[0], expected, atol=1e-6, rtol=1e-5)


def test_packed_attention_keeps_torch_state_dict_keys_both_ways():
    torch_attention, packed = _mha_pair()
    assert list(packed.state_dict()) == list(torch_attention.state_dict())
    assert list(torch_attention.state_dict()) == [
        "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias",
    ]
    other = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
    packed.load_state_dict(other.state_dict(), strict=True)
    assert torch.equal(packed.in_proj.weight, other.in_proj_weight)
    torch_attention.load_state_dict(packed.state_dict(), strict=True)
    assert torch.equal(torch_attention.in_proj_weight, other.in_proj_weight)


def test_packed_attention_shares_the_torch_parameters():
    torch_attention = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
    packed = PackedAttention(torch_attention)
    assert packed.in_proj.weight is torch_attention.in_proj_weight
    assert packed.in_proj.bias is torch_attention.in_proj_bias
    assert packed.out_proj is torch_attention.out_proj


def test_preprocessing_is_the_towers_config_else_open_clips_defaults(tmp_path):
    assert describe(BUILDERS["clip"]()).preprocessing() == {
        "size": 32, "mean": CLIP_MEAN_STD[0], "std": CLIP_MEAN_STD[1], "interpolation": "bicubic", "crop": 1.0,
    }
    tower = build_open_clip(write_open_clip(tmp_path / "model"))
    assert describe(tower).preprocessing() == OPEN_CLIP_INPUT
    meta = build_open_clip(write_open_clip(tmp_path / "model"), meta=True)
    assert all(p.is_meta for p in meta.parameters())
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in tower.state_dict().items()}


@pytest.mark.parametrize(("name", "message"), [
    ("ViT-Q-16", r"model\.backbone: unknown open_clip model 'ViT-Q-16' \(see open_clip\.list_models\(\); .*"
                 r"did you mean 'ViT-S-16'\?"),
    ("local-dir:/nowhere", r"model\.backbone: Directory specified via 'local-dir:' schema not found: /nowhere"),
])
def test_a_model_open_clip_cannot_build_is_named(name, message):
    with pytest.raises(ConfigError, match=message):
        build_open_clip(name)


@pytest.mark.parametrize("name", MODELS)
def test_masked_tokens_are_as_if_absent(name, images):
    check_masked_stream(describe(BUILDERS[name]()), images)


def test_a_biomedclip_like_timm_trunk_masks_tokens_through_its_timm_view():
    torch.manual_seed(0)
    cfg = CLIPVisionCfg(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, timm_pool="",
                        timm_proj="linear", image_size=224)
    tower = _build_vision_tower(EMBED, cfg).eval()
    backbone = describe(tower)
    assert type(tower).__name__ == "TimmModel" and backbone.width == EMBED
    check_masked_stream(backbone, torch.randn(2, 3, 224, 224))


def test_custom_attention_blocks_take_no_key_mask(images):
    backbone = describe(_tower(qk_norm=True)())
    assert not backbone.capabilities.masked_stream
    tokens = backbone.embed(images)
    with pytest.raises(CapabilityError, match=r"^VisionTransformer \(open_clip\) has no masked token stream "
                                              r"\(its blocks take no attention mask\)$"):
        backbone.run_block(0, tokens, key_mask=torch.ones(tokens.shape[:2], dtype=torch.bool))
