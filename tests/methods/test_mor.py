"""MoR (Mixture of low-varied Ranks, "EI" arXiv 2603.17514, SPEC section 3): router, fused
experts, zero init, parameter counts, settings, adapter files and a CLI run.

y = W x + b + sum_k w_k * s_k * B_k A_k x, w = softmax(router(x))[1:] (column 0: bypass).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.errors import ConfigError
from medpeft.methods import MorSettings
from medpeft.methods.mor.attach import count_mor_parameters, mor_layers
from medpeft.methods.mor.layer import MoRLinear
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)  # MLP width 4 * 32 = 128
LABELS = ["a", "b", "c"]
RANKS = (2, 4, 8)


def _layer(in_features: int = 8, out_features: int = 6, ranks=RANKS, seed: int = 0) -> MoRLinear:
    torch.manual_seed(seed)
    layer = MoRLinear(nn.Linear(in_features, out_features))
    layer.add_adapter("default", ranks)
    return layer


def _randomize(module: nn.Module, seed: int = 1) -> None:
    """Random values for every MoR tensor (B is zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".mor_" in "." + name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def _spec(settings: MorSettings | None = None) -> ModelSpec:
    return ModelSpec(
        "vit_tiny_patch16_224", len(LABELS), "mor", settings, img_size=32, model_kwargs=dict(TINY)
    )


def _model(settings: MorSettings | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(_spec(settings)).eval()


def _x(*shape: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- router ------------------------------------------------------------------------


def test_router_is_a_per_token_softmax_whose_bypass_column_is_dropped():
    layer = _layer()
    x = _x(2, 5, 8)
    probs = layer.routing_weights(x, "default")
    expected = F.softmax(
        x @ layer.mor_router_weight["default"].T + layer.mor_router_bias["default"], dim=-1
    )
    assert probs.shape == (2, 5, len(RANKS) + 1)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    experts = layer.expert_weights(x, "default")
    assert experts.shape == (2, 5, len(RANKS))
    torch.testing.assert_close(experts, probs[..., 1:])
    torch.testing.assert_close(experts.sum(-1), 1 - probs[..., 0])
    assert bool((experts.sum(-1) < 1).all())  # weight-relaxed: never a full unit of update


def test_a_dominant_bypass_switches_the_update_off():
    layer = _layer()
    _randomize(layer)
    x = _x(3, 8)
    with torch.no_grad():
        layer.mor_router_weight["default"].zero_()
        layer.mor_router_bias["default"].copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))
        torch.testing.assert_close(layer(x), layer.base(x), atol=1e-12, rtol=0)
        # Bypass off, experts equal: each expert gets 1/K of its scaled update.
        layer.mor_router_bias["default"].copy_(torch.tensor([-50.0, 0.0, 0.0, 0.0]))
        full = 2.0 * x @ (layer.mor_B["default"] @ layer.mor_A["default"]).T / len(RANKS)
        torch.testing.assert_close(layer(x), layer.base(x) + full, atol=1e-5, rtol=1e-5)


# --- fused experts -------------------------------------------------------------------


def _reference(layer: MoRLinear, x: torch.Tensor, name: str = "default") -> torch.Tensor:
    """The paper's formula with one LoRA per expert, in a loop."""
    probs = F.softmax(F.linear(x, layer.mor_router_weight[name], layer.mor_router_bias[name]), dim=-1)
    out = layer.base(x)
    start = 0
    for k, r in enumerate(layer.ranks[name]):
        a = layer.mor_A[name][start : start + r]  # (r, in)
        b = layer.mor_B[name][:, start : start + r]  # (out, r)
        scale = (2 * r) / r  # alpha = 2r
        out = out + probs[..., k + 1 : k + 2] * scale * (x @ a.T @ b.T)
        start += r
    return out


@pytest.mark.parametrize("ranks", [RANKS, (3,), (1, 1, 5, 2)])
def test_fused_matmul_equals_a_loop_over_experts(ranks):
    layer = _layer(ranks=ranks)
    _randomize(layer)
    x = _x(2, 7, 8)
    assert layer.mor_A["default"].shape == (sum(ranks), 8)
    assert layer.mor_B["default"].shape == (6, sum(ranks))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), atol=1e-5, rtol=1e-5)


def test_gradients_reach_experts_and_router_but_not_the_base():
    layer = _layer()
    _randomize(layer)
    layer(_x(4, 8)).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    for d in (layer.mor_A, layer.mor_B, layer.mor_router_weight, layer.mor_router_bias):
        assert d["default"].grad is not None and d["default"].grad.abs().sum() > 0


# --- zero init -------------------------------------------------------------------------


def test_fresh_layer_equals_the_base_linear():
    layer = _layer()
    x = _x(2, 5, 8)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))
    torch.testing.assert_close(layer.mor_B["default"], torch.zeros(6, sum(RANKS)))
    bound = 1 / 8**0.5  # kaiming_uniform(a=sqrt 5) on fan_in 8
    assert layer.mor_A["default"].abs().max() <= bound


def test_fresh_model_equals_the_base_model():
    images = _x(2, 3, 32, 32)
    torch.manual_seed(0)
    base = build_model(ModelSpec(**{**vars(_spec()), "method": "linear", "settings": None})).eval()
    model = _model()
    assert len(mor_layers(model)) == 2 * TINY["depth"]
    with torch.no_grad():
        torch.testing.assert_close(model(images), base(images), atol=1e-6, rtol=0)


# --- parameter counts ----------------------------------------------------------------


def _per_layer(d_in: int, d_out: int, ranks=RANKS) -> int:
    total = sum(ranks)
    return total * d_in + d_out * total + (len(ranks) + 1) * (d_in + 1)


def test_vit_base_layer_counts_equal_the_spec():
    with torch.device("meta"):
        fc1 = MoRLinear(nn.Linear(768, 3072))
        fc2 = MoRLinear(nn.Linear(3072, 768))
        fc1.add_adapter("default")
        fc2.add_adapter("default")
    assert fc1.num_adapter_parameters("default") == 56_836
    assert fc2.num_adapter_parameters("default") == 66_052
    assert 12 * (56_836 + 66_052) == 1_474_656


def test_tiny_per_block_counts():
    model = _model()
    per_block = _per_layer(32, 128) + _per_layer(128, 32)
    assert count_mor_parameters(model) == TINY["depth"] * per_block
    one = _model(MorSettings(blocks=(1,), ranks=(4,)))
    assert count_mor_parameters(one) == _per_layer(32, 128, (4,)) + _per_layer(128, 32, (4,))
    assert set(mor_layers(one)) == {"blocks.1.mlp.fc1", "blocks.1.mlp.fc2"}
    trainable = {n for n, p in one.named_parameters() if p.requires_grad}
    assert trainable == {
        f"blocks.1.mlp.{fc}.{d}.default"
        for fc in ("fc1", "fc2")
        for d in ("mor_A", "mor_B", "mor_router_weight", "mor_router_bias")
    } | {"head.weight", "head.bias"}


# --- settings ---------------------------------------------------------------------------


def test_settings_are_normalised_to_tuples():
    s = MorSettings(targets=["mlp.fc1"], ranks=[2, 4], blocks=[0])
    assert (s.targets, s.ranks, s.blocks) == (("mlp.fc1",), (2, 4), (0,))
    assert MorSettings() == MorSettings(("fc1", "fc2"), (2, 4, 8), None)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(ranks=()), "mor.ranks"),
        (dict(ranks=(2, 0)), "mor.ranks"),
        (dict(ranks=(2.5,)), "mor.ranks"),
        (dict(ranks=(True,)), "mor.ranks"),
        (dict(ranks=4), "mor.ranks"),
        (dict(targets=()), "mor.targets"),
        (dict(targets="mlp.fc1"), "mor.targets"),
        (dict(blocks=(-1,)), "mor.blocks"),
        (dict(blocks=3), "mor.blocks"),
    ],
)
def test_bad_settings_raise_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        MorSettings(**kwargs)


def test_unmatched_targets_raise_and_leave_the_model_alone():
    with pytest.raises(ConfigError, match=r"mlp\.fc3"):
        _model(MorSettings(targets=("mlp.fc1", "mlp.fc3")))
    with pytest.raises(ConfigError, match=r"blocks \[5\] do not exist"):
        _model(MorSettings(blocks=(5,)))


def test_mor_does_not_merge():
    from medpeft.methods import get_method

    with pytest.raises(ConfigError, match="cannot be merged"):
        get_method("mor").merge(_model())


# --- named adapters, routing ---------------------------------------------------------


def test_two_adapters_are_routed_by_name_and_deleted():
    layer = _layer()
    layer.add_adapter("other", (3,))
    _randomize(layer)
    x = _x(2, 8)
    with torch.no_grad():
        first = layer(x)  # the default adapter: the first one added
        with route(adapters="other"):
            other = layer(x)
        with route(adapters=["other", "other"]):
            torch.testing.assert_close(layer(x), other)
        with route(adapters=["default", "other"]), pytest.raises(ValueError, match="one adapter per batch"):
            layer(x)
    torch.testing.assert_close(first, _reference(layer, x))
    torch.testing.assert_close(other, _reference(layer, x, "other"))
    assert layer.adapter_names == ["default", "other"]
    layer.delete_adapter("default")
    assert layer.adapter_names == ["other"]  # now the first: it serves unrouted calls
    with torch.no_grad():
        torch.testing.assert_close(layer(x), other)
        with route(adapters="missing"):
            assert torch.equal(layer(x), layer.base(x))


# --- adapter files -----------------------------------------------------------------


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    spec = _spec(MorSettings(ranks=(2, 4)))
    model = _model(spec.settings)
    _randomize(model)
    with torch.no_grad():
        model.head.weight.add_(0.1)
    save_adapter(model, tmp_path / "tb", spec, LABELS, "multiclass", backbone_seed=0)
    keys = set(load_file(str(tmp_path / "tb" / "adapter_model.safetensors")))
    assert "blocks.0.mlp.fc1.mor_A" in keys and "blocks.1.mlp.fc2.mor_router_bias" in keys
    assert not any("default" in k for k in keys)
    assert len(keys) == 2 * TINY["depth"] * 4 + 2
    config = json.loads((tmp_path / "tb" / "adapter_config.json").read_text())
    assert config["method"] == "mor" and config["settings"]["ranks"] == [2, 4]

    torch.manual_seed(99)
    loaded, cfg = load_adapter(tmp_path / "tb")
    assert cfg.to_spec() == spec
    images = _x(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        assert torch.equal(loaded.eval()(images), expected)
        # The same file joins a model as a second, named adapter.
        host = _model(spec.settings)
        load_adapter(tmp_path / "tb", model=host, adapter_name="tb")
        with route(adapters="tb"):
            torch.testing.assert_close(host.eval()(images), expected, atol=1e-6, rtol=0)


# --- CLI ---------------------------------------------------------------------------------


CLI_TINY = [
    "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
    "data.batch_size=16", "data.num_workers=0", "train.lr=0.003", "train.warmup=0",
    "train.amp=false", "train.device=cpu", "train.epochs=1",
]


def test_cli_trains_a_mor_adapter(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", ("normal", "lesion"), n_per_class=12, img_size=32)
    run = tmp_path / "run"
    argv = ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv", f"data.manifest={data}",
            "method=mor", "mor.ranks=[2, 4]", "mor.blocks=[1]", *CLI_TINY, "--quiet"]
    assert main(argv) == 0
    adapter = run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["method"] == "mor"
    assert config["settings"] == {"targets": ["fc1", "fc2"], "ranks": [2, 4], "blocks": [1], "per_modality": False}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    mor_keys = {k for k in weights if "mor_" in k}
    assert mor_keys == {
        f"blocks.1.mlp.{fc}.{d}"
        for fc in ("fc1", "fc2")
        for d in ("mor_A", "mor_B", "mor_router_weight", "mor_router_bias")
    }
    assert set(weights) - mor_keys == {"head.weight", "head.bias"}
    assert weights["blocks.1.mlp.fc1.mor_B"].abs().sum() > 0  # trained off its zero init
