"""Many LoRA adapters on one backbone of another family than timm ViT: a transformers DINOv2
(a ``save_pretrained`` folder as the backbone weights) and a timm Swin (a checkpoint file).

The bank's mixed-task batch equals each task's adapter alone on its own model; an adapter
joins a given model (``load_adapter(folder, model)``) when the backbone is the one it was
trained on, and names what differs when it is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures.families import CONVNEXT, SIDE, TASK_LABELS, family_backbone, save_dinov2, write_family_task

from medpeft.adapters_io.folder import load_adapter
from medpeft.bank import AdapterBank
from medpeft.errors import WeightsError
from medpeft.methods import LoraSettings
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route


@pytest.fixture(scope="module", params=["dinov2", "swin"])
def bank_dir(request, tmp_path_factory) -> tuple[str, Path]:
    family, root = request.param, tmp_path_factory.mktemp(request.param)
    weights = family_backbone(family, root / "backbone")
    for seed, task in enumerate(TASK_LABELS, start=1):
        write_family_task(root / "bank", family, task, weights, seed)
    return family, root / "bank"


def _images(family: str) -> torch.Tensor:
    side = SIDE[family]
    return torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(3))


def test_mixed_batch_equals_each_task_alone(bank_dir):
    family, folder = bank_dir
    images = _images(family)
    names = ["a", "b", "b", "a"]
    bank = AdapterBank.from_directory(folder)
    probs = bank.predict(names, [{"image": x} for x in images])
    for task, labels in TASK_LABELS.items():
        model, _ = load_adapter(folder / task)
        with torch.no_grad():
            alone = torch.softmax(model.eval()(images), -1)
        for i in (i for i, name in enumerate(names) if name == task):
            assert probs[i].shape == (len(labels),)
            torch.testing.assert_close(probs[i], alone[i], rtol=0, atol=1e-5)


def test_an_adapter_joins_a_model_of_its_backbone(bank_dir):
    family, folder = bank_dir
    images = _images(family)
    shared, _ = load_adapter(folder / "a")
    load_adapter(folder / "b", shared)
    alone, _ = load_adapter(folder / "b")
    with torch.no_grad(), route(adapters="b"):
        joined = shared.eval()(images)
    with torch.no_grad():
        torch.testing.assert_close(joined, alone.eval()(images), rtol=0, atol=1e-5)


def test_an_adapter_refuses_a_model_of_another_backbone(tmp_path):
    adapter = write_family_task(tmp_path, "dinov2", "a", save_dinov2(tmp_path / "dinov2"), seed=1)
    wider = ModelSpec("tiny-dinov2", 2, img_size=None, kind="transformers")
    other = build_model(wider, weights=save_dinov2(tmp_path / "wider", hidden_size=48))
    with pytest.raises(WeightsError, match=r"embeddings\.cls_token: expected \(1, 1, 32\), got \(1, 1, 48\)"):
        load_adapter(adapter, other)

    name, kwargs, side = CONVNEXT
    convnext = build_model(ModelSpec(name, 2, settings=LoraSettings(targets=("fc1",)), img_size=side,
                                     model_kwargs=dict(kwargs)))
    swin = write_family_task(tmp_path / "swin", "swin", "a", family_backbone("swin", tmp_path / "swin"), seed=1)
    with pytest.raises(WeightsError, match=r"backbone: expected SwinTransformer \(timm\), got ConvNeXt \(timm\)"):
        load_adapter(swin, convnext)
