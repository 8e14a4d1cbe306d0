"""Per-call routing: presence masks and adapters reach the layers with the call, not via layer state."""

from __future__ import annotations

import threading

import pytest
import torch

from medpeft.errors import ConfigError
from medpeft.methods import LoraSettings, MoraSettings
from medpeft.methods.layers import adapter_names
from medpeft.model import ModelSpec, build_model
from medpeft.routing import current, route

TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.fixture
def two_tasks(tmp_path):
    """``(model, {task: single-task model})``: two LoRA tasks (different ranks and targets)."""
    from medpeft.adapters_io.folder import load_adapter, save_adapter

    singles = {}
    settings = {"tb": LoraSettings(rank=4), "cells": LoraSettings(("q", "v", "mlp.fc1"), rank=2)}
    for seed, (task, lora) in enumerate(settings.items()):
        spec = ModelSpec("vit_tiny_patch16_224", 3, settings=lora, img_size=32, model_kwargs=dict(TINY))
        torch.manual_seed(0)
        single = build_model(spec).eval()
        _randomize(single, seed)
        save_adapter(single, tmp_path / task, spec, ["a", "b", "c"], "multiclass", backbone_seed=0)
        singles[task] = single
    model, _ = load_adapter(tmp_path / "tb")
    load_adapter(tmp_path / "cells", model)
    return model.eval(), singles


def test_routing_is_scoped_to_the_block():
    assert current().adapters is None
    with route(adapters="a"):
        with route(presence=torch.ones(1, 2, dtype=torch.bool)):
            assert current().adapters == "a" and current().presence.shape == (1, 2)
        assert current().presence is None
    assert current().adapters is None


def test_routed_task_overrides_the_default(two_tasks):
    model, singles = two_tasks
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert adapter_names(model) == ["tb", "cells"]
    with torch.no_grad():
        expected = {task: single(x) for task, single in singles.items()}
        for task in ("tb", "cells"):
            with route(adapters=task):
                torch.testing.assert_close(model(x), expected[task], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), expected["tb"], rtol=0, atol=1e-6)  # unrouted: the first
        with route(adapters="tbb"), pytest.raises(ConfigError, match=r"no adapter named \['tbb'\]"):
            model(x)


def test_mixed_task_batch_equals_each_task_alone(two_tasks):
    model, singles = two_tasks
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tasks = ["cells", "tb", "tb", "cells", "tb"]
    with torch.no_grad():
        alone = {task: single(x) for task, single in singles.items()}
        with route(adapters=tasks):
            mixed = model(x)
    for i, task in enumerate(tasks):
        torch.testing.assert_close(mixed[i], alone[task][i], rtol=0, atol=1e-5)


def test_two_threads_with_different_tasks_match_sequential_runs(two_tasks):
    model, _ = two_tasks
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = {}
        for task in ("tb", "cells"):
            with route(adapters=task):
                expected[task] = model(x)
    results: dict[str, list[torch.Tensor]] = {"tb": [], "cells": []}
    barrier = threading.Barrier(2)

    def work(task: str) -> None:
        barrier.wait()
        for _ in range(20):
            with torch.no_grad(), route(adapters=task):
                results[task].append(model(x))

    threads = [threading.Thread(target=work, args=(t,)) for t in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for task, outs in results.items():
        assert len(outs) == 20 and all(torch.equal(out, expected[task]) for out in outs)


def test_two_threads_with_different_presence_masks_match_sequential_runs():
    spec = ModelSpec(
        "vit_tiny_patch16_224", 4, "mora", MoraSettings(rank=4), img_size=32,
        modalities=("a", "b"), model_kwargs=dict(TINY),
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    _randomize(model, 5)
    g = torch.Generator().manual_seed(4)
    images = {"a": torch.randn(2, 3, 32, 32, generator=g), "b": torch.randn(2, 3, 32, 32, generator=g)}
    masks = {
        "first": torch.tensor([[True, False], [True, False]]),
        "second": torch.tensor([[False, True], [True, True]]),
    }
    with torch.no_grad():
        expected = {k: model({"images": images, "present": m}) for k, m in masks.items()}
    assert not torch.allclose(expected["first"], expected["second"])
    results: dict[str, list[torch.Tensor]] = {k: [] for k in masks}
    barrier = threading.Barrier(2)

    def work(key: str) -> None:
        barrier.wait()
        for _ in range(20):
            with torch.no_grad():
                results[key].append(model({"images": images, "present": masks[key]}))

    threads = [threading.Thread(target=work, args=(k,)) for k in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key, outs in results.items():
        assert len(outs) == 20 and all(torch.equal(out, expected[key]) for out in outs)
