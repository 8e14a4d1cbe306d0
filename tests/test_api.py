"""``medpeft.adapt`` / ``load_adapter`` on every backbone family, each a tiny model built by its library.

For each family: zero-init adapted features equal the library's pooled features;
trainable parameters = r * (d_in + d_out) per adapted q and v segment + head; one
optimizer step moves only adapter and head; save -> load onto a freshly built
backbone gives identical logits; a mixed-task batch equals per-task runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model, ViTConfig, ViTModel

import medpeft
from medpeft.adapters_io.folder import add_adapter_weights, read_adapter_folder
from medpeft.backbones.base import describe
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import is_quantized
from medpeft.methods import get_method
from medpeft.methods.layers import count_parameters
from medpeft.routing import route

HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
SWIN = dict(img_size=64, window_size=4, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 1, 1, 1))


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


FAMILIES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "timm_vit": (_timm("vit_small_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 32),
    "timm_eva02": (_timm("eva02_tiny_patch14_224", img_size=28, embed_dim=32, depth=2, num_heads=2), 28),
    "timm_swin": (_timm("swin_tiny_patch4_window7_224", **SWIN), 64),
    "hf_vit": (lambda: ViTModel(ViTConfig(**HF, intermediate_size=64), add_pooling_layer=False), 32),
    "hf_dinov2": (lambda: Dinov2Model(Dinov2Config(**HF, mlp_ratio=2)), 32),
    "hf_clip": (lambda: CLIPVisionModel(CLIPVisionConfig(**HF, intermediate_size=64)), 32),
    "open_clip": (lambda: _build_vision_tower(
        16, CLIPVisionCfg(layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32)), 32),
}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family][0]().eval()


def images(family: str, n: int = 3) -> torch.Tensor:
    side = FAMILIES[family][1]
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def expected_lora_parameters(backbone: nn.Module, rank: int) -> int:
    """r * (d_in + d_out) for q and v of every attention block, read from the family view."""
    view = describe(backbone)
    total = 0
    for i in range(len(view.block_names())):
        for role in ("q", "v"):
            projection = view.attention(i)[role]
            linear = backbone.get_submodule(projection.module)
            start, stop = projection.segment or (0, linear.out_features)
            total += rank * (linear.in_features + stop - start)
    return total


def train_step(model: medpeft.AdaptedModel, x: torch.Tensor, labels: tuple[int, ...] = (0, 1, 1)) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    loss = nn.functional.cross_entropy(model(x), torch.tensor(labels))
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("family", FAMILIES)
def test_adapt_every_family(family, tmp_path):
    x = images(family)
    native = build(family)
    reference = describe(copy.deepcopy(native)).features(x)
    model = medpeft.adapt(native, medpeft.LoraSettings(rank=4), num_classes=2)

    assert model.backbone is native
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), reference, atol=1e-5, rtol=0)
        assert model(x).shape == (3, 2)

    head = sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model).trainable == expected_lora_parameters(native, 4) + head

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    train_step(model, x)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n or n.startswith("model.head.") for n in moved), moved
    assert any(".lora_B" in n for n in moved) and any(n.startswith("model.head.") for n in moved)

    model.eval()
    folder = model.save_adapter(tmp_path / "task", labels=["no", "yes"])
    loaded = medpeft.load_adapter(folder, backbone=build(family))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("frozen_dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("family", ["timm_vit", "hf_dinov2", "open_clip"])
def test_load_adapter_onto_low_precision_frozen_layers(family, frozen_dtype, tmp_path):
    x = images(family)
    model = medpeft.adapt(build(family), medpeft.LoraSettings(rank=2), num_classes=2).train()
    train_step(model, x)
    folder = model.eval().save_adapter(tmp_path / "task")

    loaded = medpeft.load_adapter(folder, backbone=build(family), frozen_dtype=frozen_dtype).eval()

    frozen = [p for p in loaded.model.parameters() if not p.requires_grad and p.dim() == 2 and p.shape[1] > 2]
    low = [p for p in frozen if is_quantized(p)] if frozen_dtype == "int8" else [
        p for p in frozen if p.dtype == torch.bfloat16]
    assert low and len(low) >= len(frozen) // 2  # the Linear weights (not embeddings, norms)
    assert {p.dtype for p in loaded.model.parameters() if p.requires_grad} == {torch.float32}
    with torch.no_grad():
        got, want = loaded(x), model(x)
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)


@pytest.mark.parametrize("family", ["timm_vit", "hf_dinov2", "open_clip"])
def test_mixed_task_batch_equals_each_task_alone(family, tmp_path):
    x = images(family)
    folders = {}
    for task, labels in (("a", (0, 1, 1)), ("b", (1, 0, 0))):
        model = medpeft.adapt(build(family), medpeft.LoraSettings(rank=2), num_classes=2).train()
        train_step(model, x, labels)
        folders[task] = model.save_adapter(tmp_path / task)
    shared = medpeft.load_adapter(folders["a"], backbone=build(family), adapter_name="a").eval()
    _, state, source = read_adapter_folder(folders["b"])
    add_adapter_weights(shared.model, "b", get_method("lora"), medpeft.LoraSettings(rank=2), state, source)
    with torch.no_grad():
        with route(adapters=["a", "b", "a"]):
            mixed = shared(x)
        alone = {}
        for task in "ab":
            with route(adapters=task):
                alone[task] = shared(x)
    torch.testing.assert_close(mixed[0], alone["a"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], alone["b"][1], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[2], alone["a"][2], atol=1e-5, rtol=0)
    assert not torch.allclose(alone["a"], alone["b"])


def test_convnext_adapts_its_mlp_linears_and_refuses_attention_roles():
    native = timm.create_model("convnext_tiny", pretrained=False, num_classes=0,
                               depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    with pytest.raises(ConfigError, match=r"\['q', 'v'\] match no layer"):
        medpeft.adapt(copy.deepcopy(native), medpeft.LoraSettings(), num_classes=2)
    model = medpeft.adapt(native, medpeft.LoraSettings(targets=("fc1", "fc2"), rank=2), num_classes=2)
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "LoRALinear"]
    assert len(wrapped) == 2 * 5


def test_swin_blocks_count_in_forward_order_across_stages():
    model = medpeft.adapt(build("timm_swin"), medpeft.LoraSettings(blocks=(1,)), num_classes=2)
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "LoRALinear"]
    assert wrapped == ["model.backbone.layers.1.blocks.0.attn.qkv"]


def test_pattern_targets_and_their_errors():
    model = medpeft.adapt(build("hf_dinov2"), medpeft.LoraSettings(targets=(r".*\.mlp\.fc[12]",)), num_classes=2)
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "LoRALinear"}
    assert wrapped == {f"model.backbone.encoder.layer.{i}.mlp.fc{j}" for i in (0, 1) for j in (1, 2)}
    with pytest.raises(ConfigError, match=r"did you mean 'mlp\.fc[12]'"):
        medpeft.adapt(build("hf_dinov2"), medpeft.LoraSettings(targets=("mlp.fcl",)), num_classes=2)


def test_an_adapter_the_forward_never_calls_is_an_error():
    class ReadsWeight(nn.Module):  # calls F.linear with the weight, bypassing any wrapper
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.linear.weight, self.linear.bias)

    native = build("timm_vit")
    model = medpeft.adapt(native, medpeft.LoraSettings(targets=("mlp.fc2",)), num_classes=2)
    for block in native.blocks:
        block.mlp.fc2 = ReadsWeight(block.mlp.fc2)
    with pytest.raises(ConfigError, match="never called"):
        model(images("timm_vit"))


def test_adapt_by_name_and_load_without_a_backbone(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(build("timm_vit").state_dict(), weights)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    model = medpeft.adapt("vit_small_patch16_224", num_classes=2, weights=weights, **kwargs).eval()
    x = images("timm_vit")
    folder = model.save_adapter(tmp_path / "task")
    loaded = medpeft.load_adapter(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)
    assert isinstance(loaded.spec.settings, medpeft.LoraSettings)


def test_settings_of_no_method_are_refused():
    with pytest.raises(ConfigError, match="is not a method's settings"):
        medpeft.adapt(build("timm_vit"), object(), num_classes=2)


def test_token_methods_refuse_backbones_without_a_token_stream():
    with pytest.raises(ConfigError, match="method 'mora' needs a backbone with a token stream"):
        medpeft.adapt(build("timm_swin"), medpeft.MoraSettings(), num_classes=2)
    with pytest.raises(ConfigError, match="reads one image here: give it data.modalities"):
        medpeft.adapt(build("hf_dinov2"), medpeft.MoraSettings(), num_classes=2)


def test_mor_runs_on_every_family_by_role():
    model = medpeft.adapt(build("open_clip"), medpeft.MorSettings(ranks=(2,)), num_classes=2)
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "MoRLinear"}
    assert wrapped == {f"model.backbone.transformer.resblocks.{i}.mlp.{fc}" for i in (0, 1) for fc in ("c_fc", "c_proj")}


def test_capability_table_in_the_docs_is_generated_from_the_registry():
    from pathlib import Path

    from medpeft.methods.capabilities import capability_table

    docs = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    assert capability_table() in docs


def test_a_transformers_folder_by_path_and_reload_without_a_module(tmp_path):
    native = build("hf_dinov2")
    native.save_pretrained(tmp_path / "rad-dino-like")
    model = medpeft.adapt(tmp_path / "rad-dino-like", medpeft.LoraSettings(), num_classes=2).eval()
    x = images("hf_dinov2")
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), describe(native).features(x), atol=1e-5, rtol=0)
    assert model.spec.kind == "transformers"
    loaded = medpeft.load_adapter(model.save_adapter(tmp_path / "task"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)
