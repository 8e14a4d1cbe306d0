"""A bank directory of three tiny tasks on one backbone: different ranks, targets, heads, task types."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.bank import AdapterBank
from medpeft.methods import LoraSettings
from medpeft.model import ModelSpec, build_model
from tests.methods.conftest import BACKBONE, TINY, _randomize_lora, _tiny_vit

# name: (LoRA settings, labels, task type)
TASKS = {
    "tb": (LoraSettings(targets=("q", "v"), rank=4), ["normal", "tb", "other"], "multiclass"),
    "blood": (
        LoraSettings(targets=("q", "v", "mlp.fc1"), rank=8, alpha=4.0),
        ["neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte"],
        "multiclass",
    ),
    "chest": (LoraSettings(targets=("attn.proj",), rank=2), ["effusion", "mass", "nodule", "edema"], "multilabel"),
}


def tiny_spec(settings: LoraSettings, labels: list[str]) -> ModelSpec:
    return ModelSpec(BACKBONE, len(labels), img_size=32, model_kwargs=dict(TINY), settings=settings)


def write_task(folder: Path, name: str, weights: Path, seed: int) -> Path:
    """Save task ``name`` of `TASKS` with random LoRA B and head into ``folder/name``."""
    settings, labels, task = TASKS[name]
    spec = tiny_spec(settings, labels)
    torch.manual_seed(seed)
    model = build_model(spec, weights=weights)
    _randomize_lora(model, seed)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    return save_adapter(model, folder / name, spec, labels, task, backbone_weights=weights)


@pytest.fixture(scope="package")
def bank_dir(tmp_path_factory) -> Path:
    """``bank/{tb,blood,chest}`` adapter folders sharing ``backbone.safetensors``."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bank")
    weights = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=123).state_dict().items()}, str(weights))
    for seed, name in enumerate(TASKS, start=1):
        write_task(root / "bank", name, weights, seed)
    return root / "bank"


@pytest.fixture(scope="package")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="package")
def alone(bank_dir, images) -> dict[str, torch.Tensor]:
    """Probabilities of each task on ``images``, run on its own model built from its folder."""
    out = {}
    for name in TASKS:
        model, config = load_adapter(bank_dir / name)
        with torch.no_grad():
            logits = model.eval()(images)
        out[name] = torch.sigmoid(logits) if config.task == "multilabel" else torch.softmax(logits, -1)
    return out


@pytest.fixture(scope="package")
def shared_bank(bank_dir) -> AdapterBank:
    """One bank for the tests that do not depend on what is loaded."""
    return AdapterBank.from_directory(bank_dir)


def write_method_task(folder: Path, name: str, method: str, weights: Path, seed: int,
                      labels: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """Save a ``method`` adapter (its default settings, random head) into ``folder/name``."""
    spec = ModelSpec(BACKBONE, len(labels), method, img_size=32, model_kwargs=dict(TINY))
    torch.manual_seed(seed)
    model = build_model(spec, weights=weights)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
        if method == "full":  # a fine-tuned backbone: not the one it started from
            for param in model.parameters():
                param.add_(torch.randn_like(param), alpha=0.05)
    return save_adapter(model, folder / name, spec, list(labels), "multiclass", backbone_weights=weights)
