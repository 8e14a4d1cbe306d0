"""timm backbone families on tiny random-init models built by timm: roles, calls, features, streams."""

from __future__ import annotations

from collections import Counter

import pytest
import timm
import torch
from timm.layers import GluMlp
from torch import nn

from medpeft.backbones.base import CapabilityError, describe, grid_shape
from medpeft.errors import ConfigError
from medpeft.routing import current, route
from tests.backbones.contract import check_attention_weights, check_token_feature_map

CASES = {
    "vit": ("vit_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 2),
    "deit_distilled": ("deit_tiny_distilled_patch16_224",
                       dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 2),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, embed_dim=32, depth=2, num_heads=2), 2),
    "virchow_like": ("vit_huge_patch14_224", dict(
        img_size=28, embed_dim=32, depth=3, num_heads=2, mlp_layer=timm.layers.SwiGLUPacked, act_layer=nn.SiLU,
        mlp_ratio=5.3375, reg_tokens=4, init_values=1e-5), 3),
    "eva02_qv_bias": ("eva02_tiny_patch14_224", dict(img_size=28, embed_dim=32, depth=2, num_heads=2), 2),
    "eva02_separate_qkv": ("eva02_base_patch14_224", dict(img_size=28, embed_dim=32, depth=2, num_heads=2), 2),
    "swin": ("swin_tiny_patch4_window7_224", dict(
        img_size=64, window_size=4, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 1, 1, 1)), 5),
    "convnext": ("convnext_tiny", dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)), 5),
}
FAMILY = {"swin": "timm_hier", "convnext": "timm_hier"}
SIDE = {"swin": 64, "convnext": 64, "vit": 32, "deit_distilled": 32}


def tiny(case: str) -> tuple[nn.Module, torch.Tensor]:
    """The case's timm model (eval mode, 3 classes) and a batch of two images."""
    name, kwargs, _ = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()
    side = SIDE.get(case, 28)
    return model, torch.randn(2, 3, side, side)


def count_calls(model: nn.Module, names: set[str], images: torch.Tensor) -> Counter:
    """How often each named module runs during one forward of ``model``."""
    calls: Counter = Counter()
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: calls.update([n])) for n in names]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return calls


def projections(model: nn.Module) -> list:
    backbone = describe(model)
    return [p for i in range(len(backbone.block_names())) for _, p in backbone.projections(i)]


@pytest.mark.parametrize("case", CASES)
def test_family_and_block_names(case):
    model, _ = tiny(case)
    backbone = describe(model)
    assert backbone.family == FAMILY.get(case, "timm_vit")
    names = backbone.block_names()
    assert len(names) == CASES[case][2]
    assert len(set(names)) == len(names)
    assert all(not hasattr(model.get_submodule(n), "blocks") for n in names)  # blocks, not stages


@pytest.mark.parametrize("case", CASES)
def test_every_projection_is_a_linear_and_its_segment_lies_inside(case):
    model, _ = tiny(case)
    found = projections(model)
    assert found
    for projection in found:
        linear = model.get_submodule(projection.module)
        assert isinstance(linear, nn.Linear), projection
        start, stop = projection.segment or (0, linear.out_features)
        assert 0 <= start < stop <= linear.out_features


@pytest.mark.parametrize("case", CASES)
def test_named_linears_are_called_by_the_forward_after_prepare(case):
    model, images = tiny(case)
    describe(model).prepare()
    names = {p.module for p in projections(model)}
    calls = count_calls(model, names, images)
    assert {n: calls[n] for n in names} == dict.fromkeys(names, 1)


def test_eva_qkv_with_q_v_biases_is_bypassed_until_prepare():
    model, images = tiny("eva02_qv_bias")
    qkv = {p.module for p in projections(model) if p.segment}
    assert model.blocks[0].attn.q_bias is not None
    assert count_calls(model, qkv, images) == Counter()  # timm's F.linear(x, qkv.weight, bias)
    describe(model).prepare()
    describe(model).prepare()  # idempotent
    assert count_calls(model, qkv, images) == Counter(dict.fromkeys(qkv, 1))
    assert "blocks.0.attn.q_bias" in dict(model.named_parameters())  # names unchanged


@pytest.mark.parametrize("case", CASES)
def test_prepare_keeps_the_output(case):
    model, images = tiny(case)
    with torch.no_grad():
        before = model(images)
        describe(model).prepare()
        torch.testing.assert_close(model(images), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_features_equal_the_library_pooled_output(case):
    model, images = tiny(case)
    backbone = describe(model)
    with torch.no_grad():
        features = backbone.features(images)
        model.reset_classifier(0)
        pooled = model(images)
    assert features.shape == (2, backbone.width)
    torch.testing.assert_close(features, pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c not in FAMILY])
def test_token_stream_pools_to_the_features(case):
    model, images = tiny(case)
    backbone = describe(model)
    assert backbone.capabilities.token_stream
    with torch.no_grad():
        tokens = backbone.embed(images)
        patches = (images.shape[-1] // model.patch_embed.patch_size[0]) ** 2
        assert tokens.shape == (2, backbone.num_prefix_tokens + patches, backbone.width)
        for index in range(len(backbone.block_names())):
            tokens = backbone.run_block(index, tokens)
        torch.testing.assert_close(backbone.pool(tokens), backbone.features(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("case", "prefix", "cls", "maps"), [
    ("vit", 1, True, True), ("deit_distilled", 2, True, True), ("dinov2_reg4", 5, True, True),
    ("virchow_like", 5, True, True), ("eva02_qv_bias", 1, True, False),
])
def test_prefix_tokens_and_capabilities(case, prefix, cls, maps):
    backbone = describe(tiny(case)[0])
    assert backbone.num_prefix_tokens == prefix
    caps = backbone.capabilities
    assert (caps.cls_token, caps.attention_maps, caps.patch_grid) == (cls, maps, True)


def test_virchow_like_mlp_is_packed_swiglu():
    model, _ = tiny("virchow_like")
    mlp = model.blocks[0].mlp
    assert isinstance(mlp, GluMlp) and isinstance(mlp.act, nn.SiLU)
    assert set(describe(model).mlp(0)) == {"fc1", "fc2"}
    assert mlp.fc1.out_features == 2 * mlp.fc2.in_features  # fc1 packs gate and up


def test_eva_roles_follow_timm_layout():
    fused = describe(tiny("eva02_qv_bias")[0])
    assert fused.attention(1)["v"].module == "blocks.1.attn.qkv"
    assert fused.attention(1)["v"].segment == (64, 96)
    separate = describe(tiny("eva02_separate_qkv")[0])
    assert {r: p.module for r, p in separate.attention(0).items()} == {
        "q": "blocks.0.attn.q_proj", "k": "blocks.0.attn.k_proj", "v": "blocks.0.attn.v_proj",
        "out": "blocks.0.attn.proj",
    }
    assert set(separate.mlp(0)) == {"fc1_g", "fc1_x", "fc2"}  # timm's SwiGLU with scale_mlp


def test_eva_stream_repeats_the_rotary_grid_per_image_and_refuses_partial_grids():
    model, images = tiny("eva02_qv_bias")
    backbone = describe(model)
    with torch.no_grad():
        tokens = backbone.embed(images)
        prefix, patches = tokens[:, :1], tokens[:, 1:]
        two = backbone.run_block(0, torch.cat([prefix, patches, patches], 1))
        assert two.shape == (2, 1 + 2 * patches.shape[1], 32)
        torch.testing.assert_close(two[:, 1:5], two[:, 5:9])  # both images get the same positions
        with pytest.raises(CapabilityError, match="not whole 2x2 grids"):
            backbone.run_block(0, tokens[:, :-1])


def test_eva_with_a_dynamic_size_has_no_token_stream():
    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, embed_dim=32, depth=1, num_heads=2,
                              dynamic_img_size=True)
    backbone = describe(model)
    assert not backbone.capabilities.token_stream and not backbone.capabilities.patch_grid
    with pytest.raises(CapabilityError, match="Eva \\(timm\\) has no token stream"):
        backbone.embed(torch.randn(1, 3, 28, 28))


def test_swin_blocks_are_numbered_over_stages():
    backbone = describe(tiny("swin")[0])
    assert backbone.block_names()[1:3] == ["layers.1.blocks.0", "layers.1.blocks.1"]
    assert backbone.attention(2)["out"].module == "layers.1.blocks.1.attn.proj"
    assert backbone.attention(2)["k"].segment == (32, 64)  # stage 1 is 32 wide


@pytest.mark.parametrize("case", ["swin", "convnext"])
def test_hierarchical_models_offer_pooled_features_and_feature_maps_only(case):
    backbone = describe(tiny(case)[0])
    assert backbone.capabilities == type(backbone.capabilities)(False, False, False, False, feature_map=True)
    with pytest.raises(CapabilityError, match="token stream"):
        backbone.embed(torch.randn(1, 3, 64, 64))
    with pytest.raises(CapabilityError, match="has no attention maps"):
        backbone.attention_weights()


@pytest.mark.parametrize(("case", "side"), [("swin", 64), ("convnext", 64), ("convnext", 96)])
def test_the_last_blocks_output_is_a_channels_first_map_at_stride_32(case, side):
    model, _ = tiny(case)
    backbone = describe(model)
    images = torch.randn(2, 3, 64, side)
    outputs = []
    handle = backbone.blocks()[-1].register_forward_hook(lambda _m, _i, out: outputs.append(out))
    with torch.no_grad():
        pooled = backbone.features(images)
    handle.remove()
    features = backbone.feature_map(outputs[0], (64, side))
    assert features.shape == (2, model.num_features, 2, side // 32)
    # the pooled features are this map's channels, normed per position (Swin) or after the mean (ConvNeXt)
    if case == "swin":
        expected = model.norm(features.permute(0, 2, 3, 1)).mean((1, 2))
    else:
        expected = model.head.norm(features.mean((2, 3), keepdim=True)).flatten(1)
    torch.testing.assert_close(expected, pooled, atol=1e-5, rtol=0)


def test_convnext_has_no_attention_and_conv_mlps_are_not_named():
    backbone = describe(tiny("convnext")[0])
    assert backbone.attention(0) == {}
    assert set(backbone.mlp(3)) == {"fc1", "fc2"}
    assert backbone.mlp(3)["fc1"].module == "stages.2.blocks.1.mlp.fc1"
    conv = describe(timm.create_model("convnext_tiny", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=True))
    assert conv.mlp(0) == {}  # 1x1 convolutions: nothing a Linear adapter can wrap


@pytest.mark.parametrize("case", ["vit", "deit_distilled", "dinov2_reg4", "virchow_like"])
def test_vit_attention_weights_and_patch_grid(case):
    model, images = tiny(case)
    backbone = describe(model)
    side = images.shape[-1] // model.patch_embed.patch_size[0]
    check_attention_weights(backbone, images, tokens=backbone.num_prefix_tokens + side**2)
    assert all(block.attn.fused_attn for block in model.blocks)  # timm's fused kernel is back
    check_token_feature_map(backbone, images, grid=(side, side))


def test_eva_has_a_feature_map_but_no_attention_maps():
    model, images = tiny("eva02_qv_bias")
    backbone = describe(model)
    check_token_feature_map(backbone, images, grid=(2, 2))
    with pytest.raises(CapabilityError, match=r"^Eva \(timm\) has no attention maps$"):
        backbone.attention_weights()


def test_grid_shape_follows_the_aspect_ratio():
    assert grid_shape(16, 32, 32) == (4, 4)
    assert grid_shape(6, 64, 96) == (2, 3) and grid_shape(6, 96, 64) == (3, 2)
    with pytest.raises(ConfigError, match="7 patch tokens do not tile a 64x96 image"):
        grid_shape(7, 64, 96)


def test_prepared_swin_window_attention_routes_each_sample_per_window():
    model, images = tiny("swin")
    describe(model).prepare()
    seen = []
    model.layers[0].blocks[0].attn.qkv.register_forward_hook(lambda *_: seen.append(current().adapters))
    with torch.no_grad(), route(adapters=("a", "b")):
        model(images)
    windows = (64 // 4 // 4) ** 2  # 16x16 patches of 4 px in windows of 4x4
    assert seen == [("a",) * windows + ("b",) * windows]
    with torch.no_grad(), route(adapters="a"):  # one adapter for the whole batch: as it is
        model(images)
    assert seen[-1] == "a"
