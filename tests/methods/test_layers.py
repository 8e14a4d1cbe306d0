"""The adapter names a model holds: found once per change, not by walking the model every call."""

from __future__ import annotations

import pytest

from medpeft.adapters_io.export import take_out_wrappers
from medpeft.errors import ConfigError
from medpeft.methods import layers
from medpeft.methods.layers import adapter_names, check_routed, delete_adapter
from medpeft.methods.lora.attach import add_lora
from medpeft.model import build_model
from medpeft.routing import route


@pytest.fixture
def walks(monkeypatch) -> list[int]:
    """Counts the walks over a model's modules that finding its adapter names makes."""
    counted: list[int] = []
    walk = layers.keyed_layers

    def counting(model):
        counted.append(1)
        return walk(model)

    monkeypatch.setattr(layers, "keyed_layers", counting)
    return counted


def test_names_are_found_once_and_again_after_each_change(tiny_spec, walks):
    model = build_model(tiny_spec())
    assert check_routed(model) == "default" and check_routed(model) == "default"
    assert len(walks) == 1
    add_lora(model, targets=("mlp.fc1",), adapter_name="fc")  # only layers not wrapped before
    with route(adapters="fc"):
        assert check_routed(model) == "fc"
    assert adapter_names(model) == ["default", "fc"] and len(walks) == 2
    delete_adapter(model, "fc")
    with route(adapters="fc"), pytest.raises(ConfigError, match=r"no adapter named \['fc'\]"):
        check_routed(model)
    take_out_wrappers(model)
    assert adapter_names(model) == [] and check_routed(model) is None
