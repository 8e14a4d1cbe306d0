"""EI backbones at the paper's sizes: DINOv2 ViT-B/14 with registers and CLIP ViT-B/16.

Random init with small depth/width overrides. Checked: sizes that are not multiples of
14 round to the nearest multiple; register tokens (``num_prefix_tokens`` 5) do not
disturb LoRA/MoR targets, the concat fusion's sequence or early intervention's [CLS].
"""

from __future__ import annotations

import pytest
import torch

from medpeft.adapters_io.folder import default_preprocessing
from medpeft.backbones.timm_build import build_vit, patch_multiple
from medpeft.data.transforms import CLIP_MEAN, CLIP_STD
from medpeft.fusion.intervention import EarlyIntervention
from medpeft.methods.mor.attach import mor_layers
from medpeft.model import ModelSpec, build_model

DINO = "vit_base_patch14_reg4_dinov2.lvd142m"
CLIP = "vit_base_patch16_clip_224.openai"
TINY = dict(depth=1, embed_dim=32, num_heads=2)


@pytest.mark.parametrize(
    ("name", "wanted", "used"),
    [(DINO, 448, 448), (DINO, 512, 518), (DINO, 256, 252), (DINO, 7, 14), (CLIP, 448, 448), (CLIP, 500, 496)],
)
def test_paper_sizes_round_to_a_patch_multiple(name, wanted, used):
    assert patch_multiple(name, wanted) == used


def test_dinov2_registers_and_clip_preprocessing():
    dino = build_vit(DINO, 3, img_size=28, **TINY)
    assert dino.num_prefix_tokens == 5 and dino.forward_features(torch.randn(1, 3, 28, 28)).shape == (1, 9, 32)
    clip = build_vit(CLIP, 3, img_size=32, **TINY)
    pre = default_preprocessing(clip, 32)
    assert (pre.mean, pre.std) == (CLIP_MEAN, CLIP_STD) and not isinstance(clip.norm_pre, torch.nn.Identity)


def _spec(method: str, fusion: str = "auto", **settings) -> ModelSpec:
    from medpeft.methods import get_method

    return ModelSpec(DINO, 2, method, get_method(method).settings_type(**settings), 28, ("a", "b"),
                     model_kwargs=dict(TINY), fusion=fusion)


def test_lora_and_mor_targets_on_a_register_vit():
    lora = build_model(_spec("lora"))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert "vit.blocks.0.attn.qkv.lora_A.default" in names
    batch = {"images": {m: torch.randn(2, 3, 28, 28) for m in "ab"}, "present": torch.ones(2, 2, dtype=torch.bool)}
    assert lora.embed(batch).shape == (2, 5 + 2 * 4, 32)  # [CLS] + 4 registers once, then each view's 4 patches
    ei = build_model(_spec("mor", "early_intervention"))
    assert len(mor_layers(ei)) == 2 * 2 * 2  # fc1 + fc2 of one block, 2 modalities x (target, reference)
    assert ei(batch).fused.shape == (2, 2)


def test_intervention_reads_the_cls_token_not_a_register():
    torch.manual_seed(0)
    model = build_model(_spec("mor", "early_intervention")).eval()
    vit, view, x = model.targets["a"], model.views["targets.a"], torch.randn(2, 3, 28, 28)
    tokens = torch.randn(2, 1, 32)
    with torch.no_grad():
        plain = vit.forward_head(vit.forward_features(x), pre_logits=True)
        masked = EarlyIntervention.intervened(view, x, tokens, torch.zeros(2, 1, dtype=torch.bool))
        steered = EarlyIntervention.intervened(view, x, tokens, torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-7)  # a masked-out token is no token
    assert (steered - plain).norm() > 1e-3 * plain.norm()  # an attended one steers the [CLS]


def test_each_family_says_which_image_sizes_it_takes(vilt_config):
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from transformers import Dinov2Config, Dinov2Model, ViltModel

    from medpeft.backbones.base import describe
    from medpeft.fusion.vilt import ViltClassifier
    from medpeft.model import input_size_problem

    fixed = describe(build_vit("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, **TINY))
    assert fixed.size_problem(32) is None
    assert fixed.size_problem(64) == ("VisionTransformer (timm) takes 32 px images only "
                                      "(the img_size it was built at)")
    dynamic = describe(build_vit("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, dynamic_img_size=True, **TINY))
    assert dynamic.size_problem(64) is None
    assert dynamic.size_problem(36) == ("VisionTransformer (timm) takes multiples of its 8 px patches (the rest "
                                        "of each row and column would be dropped)")
    convnext = describe(build_vit("convnext_tiny", 2, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)))
    assert convnext.size_problem(37) is None
    dinov2 = describe(Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               image_size=28, patch_size=14)))
    assert dinov2.size_problem(56) is None and "multiples of its 14 px patches" in dinov2.size_problem(64)
    tower = describe(_build_vision_tower(16, CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                             image_size=32)))
    assert tower.size_problem(32) is None and tower.size_problem(64).endswith("takes 32x32 px images only")
    vilt = ViltClassifier(ViltModel(vilt_config), 2)
    assert input_size_problem(vilt, 64) is None
    assert input_size_problem(vilt, 36).startswith("ViltModel takes multiples of its 8 px patches")
