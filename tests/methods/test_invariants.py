"""The adapter invariants of DESIGN.md, run for every registered method.

zero-init adapter == base model; merge then unmerge == original and merged ==
unmerged (mergeable methods; the others refuse to merge); only adapter + head get
gradients; save -> load -> identical logits; parameter counts equal SPEC.md; the
registry metadata says what the method does (``mixable``: one adapter per sample).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import ViltConfig

from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.errors import ConfigError
from medpeft.methods import (
    DoraSettings,
    LoraSettings,
    MoraSettings,
    MorSettings,
    PromptSettings,
    get_method,
    method_names,
)
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)
TINY_VILT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    image_size=32, patch_size=8, max_image_length=-1, vocab_size=64,
)
LABELS = ["a", "b", "c"]


def _timm(method: str, settings=None, modalities=("image",)) -> ModelSpec:
    return ModelSpec(
        "vit_tiny_patch16_224", 3, method, settings, img_size=32, modalities=modalities,
        model_kwargs=dict(TINY),
    )


def _vilt(method: str, settings=None) -> ModelSpec:
    return ModelSpec(None, 3, method, settings, kind="vilt", modalities=("image", "text"), vilt_config=TINY_VILT)


CASES = {
    "lora": _timm("lora", LoraSettings(("q", "v", "mlp.fc1"), rank=4, alpha=8)),
    "mora": _timm("mora", MoraSettings(rank=4, blocks=(0, 1)), modalities=("a", "b")),
    "prompts": _vilt("prompts", PromptSettings(num_layers=2, length=4)),
    "linear": _timm("linear"),
    "full": _timm("full"),
    "mor": _timm("mor", MorSettings(("mlp.fc1", "mlp.fc2", "attn.proj"), ranks=(2, 3), blocks=(1,))),
    "dora": _timm("dora", DoraSettings(("q", "v", "mlp.fc1"), rank=4, alpha=8)),
}
MASK = torch.tensor([[True, True], [True, False], [False, True]])


def _batch(spec: ModelSpec) -> dict:
    g = torch.Generator().manual_seed(9)
    images = {m: torch.randn(3, 3, 32, 32, generator=g) for m in spec.modalities if m != "text"}
    batch = {"images": images, "present": torch.ones(3, len(spec.modalities), dtype=torch.bool)}
    if spec.kind == "vilt":
        ids = torch.randint(5, 64, (3, 6), generator=g)
        batch["text"] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if len(spec.modalities) > 1:
        batch["present"] = MASK
    return batch


def _build(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec).eval()


def _perturb(model: torch.nn.Module) -> None:
    """Move every trainable tensor off its initial value (zero-init B included)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.2)


def test_every_registered_method_has_a_case():
    assert set(CASES) == set(method_names())


@pytest.mark.parametrize("name", CASES)
def test_fresh_adapter_equals_the_base_model(name):
    spec = CASES[name]
    method = get_method(name)
    base = _build(ModelSpec(**{**vars(spec), "method": "linear", "settings": None}))
    model = _build(spec)
    batch = _batch(spec)
    with torch.no_grad():
        same = torch.allclose(model(batch), base(batch), atol=1e-6)
    assert same == method.identity_at_init


@pytest.mark.parametrize("name", CASES)
def test_merge_unmerge(name):
    spec, method = CASES[name], get_method(name)
    model = _build(spec)
    _perturb(model)
    batch = _batch(spec)
    if not method.mergeable:
        with pytest.raises(ConfigError, match="cannot be merged"):
            method.merge(model)
        return
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(batch)
        method.merge(model)
        merged = model(batch)
        method.unmerge(model)
        after = model(batch)
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_mixable_methods_serve_one_adapter_per_sample(name):
    spec, method = CASES[name], get_method(name)
    if not method.adapter_dicts:  # no adapters keyed by name: nothing to route per sample
        assert not method.mixable
        return
    model = _build(spec)
    method.attach(model, spec.settings, "second")
    _perturb(model)
    batch, names = _batch(spec), ["second", "default", "second"]
    with torch.no_grad():
        alone = {}
        for adapter in ("default", "second"):
            with route(adapters=adapter):
                alone[adapter] = model(batch)
        assert not torch.allclose(alone["default"], alone["second"])
        if not method.mixable:
            with route(adapters=names), pytest.raises(ValueError, match="one adapter per batch"):
                model(batch)
            return
        with route(adapters=names):
            mixed = model(batch)
    for i, adapter in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[adapter][i], atol=1e-5, rtol=1e-5)


def test_registry_metadata_of_the_built_in_methods():
    flags = ("mergeable", "mixable", "needs_tokens", "per_modality")
    table = {name: [flag for flag in flags if getattr(get_method(name), flag)] for name in CASES}
    assert table == {
        "lora": ["mergeable", "mixable"],
        "mora": ["needs_tokens", "per_modality"],
        "prompts": ["needs_tokens", "per_modality"],
        "linear": [],
        "full": [],
        "mor": [],
        "dora": ["mergeable"],
    }


@pytest.mark.parametrize("name", CASES)
def test_only_adapter_and_head_get_gradients(name):
    spec, method = CASES[name], get_method(name)
    model = _build(spec).train()
    _perturb(model)
    model(_batch(spec)).sum().backward()
    prefixes = model.trained_prefixes
    for param_name, param in model.named_parameters():
        expected = param_name.startswith(prefixes) or method.is_trainable(param_name)
        assert param.requires_grad == expected, param_name
        assert (param.grad is not None) == expected, param_name
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", CASES)
def test_save_load_gives_identical_logits(name, tmp_path):
    spec = CASES[name]
    model = _build(spec)
    _perturb(model)
    save_adapter(model, tmp_path / name, spec, LABELS, "multiclass", kinds=_kinds(spec), backbone_seed=0)
    torch.manual_seed(123)  # the caller's RNG does not matter: the backbone comes from its seed
    loaded, config = load_adapter(tmp_path / name)
    assert config.method == name and config.to_spec() == spec
    batch = _batch(spec)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(batch), model(batch))


def _kinds(spec: ModelSpec) -> dict[str, str]:
    return {m: "text" if m == spec.text_modality else "image" for m in spec.modalities}


PAPER_COUNTS = {
    # method: (spec, adapter parameters per SPEC.md)
    "lora": (ModelSpec("vit_base_patch16_224", 2, "lora", img_size=224), 147_456),
    "mora": (ModelSpec(None, 8, "mora", kind="vilt", modalities=("image", "text")), 9_216),
    "prompts": (ModelSpec(None, 8, "prompts", kind="vilt", modalities=("image", "text")), 3 * 6 * 16 * 768),
    "linear": (ModelSpec("vit_base_patch16_224", 2, "linear", img_size=224), 0),
    "full": (ModelSpec("vit_base_patch16_224", 2, "full", img_size=224), 85_798_656),
    "mor": (ModelSpec("vit_base_patch16_224", 2, "mor", img_size=224), 1_474_656),
    "dora": (ModelSpec("vit_base_patch16_224", 2, "dora", img_size=224), 147_456 + 12 * 2 * 768),
}


@pytest.mark.parametrize("name", CASES)
def test_parameter_counts_equal_the_papers(name):
    spec, expected = PAPER_COUNTS[name]
    spec = copy.deepcopy(spec)
    if spec.kind == "timm":
        spec.model_kwargs = {"weight_init": "skip"}
    else:
        spec.vilt_config = ViltConfig().to_dict()
    with torch.device("meta"):
        model = build_model(spec)
    method = get_method(name)
    count = sum(
        p.numel() for n, p in model.named_parameters()
        if method.is_trainable(n) and not n.startswith(model.trained_prefixes)
    )
    if name == "full":
        count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    assert count == expected
