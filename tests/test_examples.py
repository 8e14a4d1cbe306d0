"""examples/python_api.py runs and does what it says: one builder for every method,
two routed adapters on one frozen backbone, a MoRA adapter saved and reloaded."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from medpeft.adapters_io.folder import load_adapter
from medpeft.errors import ConfigError
from medpeft.heads import TaskHeads
from medpeft.methods.layers import adapter_names
from medpeft.routing import route

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    namespace = runpy.run_path(str(EXAMPLE), run_name="python_api_example")
    threads = torch.get_num_threads()
    result = namespace["main"](out, epochs=2)
    assert torch.get_num_threads() == threads  # main restores the thread setting
    return out, namespace, result


def test_each_task_trained_and_saved(example):
    out, _, result = example
    assert set(result["tasks"]) == {"lesion", "zone"}
    for name, task in result["tasks"].items():
        folder = out / "adapters" / name
        assert task["adapter_dir"] == folder
        assert (folder / "adapter_model.safetensors").is_file()
        assert (folder / "adapter_config.json").is_file()
        assert (out / "runs" / name / "metrics.csv").is_file()
        assert 0.0 <= task["test_metrics"]["auroc"] <= 1.0
        assert task["adapter_bytes"] < 100_000  # LoRA + head only, never the backbone
    # the lesion task (bright blobs vs none) is easy: learned, not chance
    assert result["tasks"]["lesion"]["test_metrics"]["auroc"] > 0.7


def test_two_adapters_share_one_frozen_backbone(example):
    _, _, result = example
    shared, tasks = result["shared"], result["tasks"]
    assert adapter_names(shared) == ["lesion", "zone"]
    assert isinstance(shared.head, TaskHeads) and set(shared.head.heads) == {"lesion", "zone"}
    assert result["zone_config"].labels == ["lower", "middle", "normal", "upper"]
    # the backbone is counted once: the second task only adds its LoRA weights and head
    single = tasks["zone"]["params"]
    extra = result["params"].total - tasks["lesion"]["params"].total
    assert extra == single.trainable
    assert result["params"].trainable == sum(t["params"].trainable for t in tasks.values())
    frozen = [n for n, p in shared.named_parameters() if not p.requires_grad]
    assert frozen and all(".lora_" not in n and not n.startswith("head.") for n in frozen)


def test_switching_changes_head_and_predictions(example):
    _, _, result = example
    outputs, shared = result["outputs"], result["shared"]
    assert outputs["lesion"].shape[1] == 2 and outputs["zone"].shape[1] == 4
    assert outputs["lesion"].shape[0] == outputs["zone"].shape[0]
    # each adapter on the shared backbone reproduces the model it was trained in
    assert result["matches"] == {"lesion": True, "zone": True}
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        with route(adapters="lesion"):
            lesion = shared(images)
        with route(adapters="zone"):  # a routed call picks the task for that call only
            zone = shared(images)
        unrouted = shared(images)  # the first adapter loaded: lesion
    assert lesion.shape == (3, 2) and zone.shape == (3, 4)
    assert torch.equal(unrouted, lesion) and not torch.equal(zone[:, :2], lesion)


def test_per_sample_routing_and_unknown_names(example):
    _, _, result = example
    assert result["mixed_matches"] is True
    with pytest.raises(ConfigError, match="no adapter named"), torch.no_grad(), route(adapters="tb"):
        result["shared"](torch.randn(1, 3, 32, 32))


def test_saved_adapter_reloads_alone(example):
    out, _, result = example
    model, config = load_adapter(
        out / "adapters" / "zone", weights=out / "backbone.safetensors", adapter_name="zone"
    )
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), route(adapters="zone"):
        expected = result["shared"].eval()(images)
        got = model.eval()(images)
    assert config.num_classes == 4
    torch.testing.assert_close(got, expected)


def test_mora_adapter_from_the_same_builder(example):
    out, _, result = example
    mora = result["mora"]
    assert mora["adapter_dir"] == out / "adapters" / "mora"
    assert (mora["adapter_dir"] / "adapter_model.safetensors").is_file()
    config = mora["config"]
    assert config.method == "mora" and config.modalities == {"a": "image", "b": "image"}
    assert config.method_settings().rank == 4 and list(config.method_settings().blocks) == [0]
    assert mora["reloaded_matches"] is True
    assert 0.0 <= mora["test_metrics"]["f1_macro"] <= 1.0
    trained = {n for n, p in mora["model"].named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("head.", "modality_embed")) or "mora" in n for n in trained)


def test_any_backbone_example_adapts_three_libraries(tmp_path):
    namespace = runpy.run_path(str(EXAMPLE.parent / "any_backbone.py"), run_name="any_backbone_example")
    results = namespace["main"](tmp_path)
    assert len(results) == 3
    for name, result in results.items():
        assert result["reloads_identically"], name
        assert 0 < result["trainable"] < 5000 and result["adapter_kib"] < 64, (name, result)
