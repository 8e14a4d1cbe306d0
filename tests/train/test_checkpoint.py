"""Trainable-weight files, resumable checkpoints and RNG state round trips."""

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from medpeft.errors import WeightsError
from medpeft.model import ModelSpec, build_model
from medpeft.train import TrainSettings, fit
from medpeft.train.checkpoint import (
    load_checkpoint,
    load_trainable,
    load_trainable_file,
    rng_state,
    save_trainable,
    set_rng_state,
    trainable_state,
)
from medpeft.train.files import BEST, CHECKPOINT
from medpeft.train.schedules import build_optimizer, build_scheduler


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)
    return build_model(ModelSpec("vit_tiny_patch16_224", 3, img_size=32, model_kwargs=kwargs))


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_only_trainable_parameters_are_saved(tmp_path):
    model = tiny_vit()
    names = trainable_names(model)
    assert names and all(".lora_" in n or n.startswith("head.") for n in names)
    assert set(trainable_state(model)) == names
    save_trainable(model, tmp_path / "w.safetensors")
    assert set(load_file(str(tmp_path / "w.safetensors"))) == names


def test_fit_checkpoint_holds_trainable_weights_and_loads_safely(tmp_path):
    model = tiny_vit()
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    settings = TrainSettings(epochs=1, device="cpu")
    train, val = DataLoader(data, batch_size=4), DataLoader(data, batch_size=8)
    fit(model, train, val, "multiclass", settings, tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert set(state["trainable"]) == trainable_names(model)
    assert state["progress"]["epoch"] == 1 and state["progress"]["global_step"] == 2
    assert set(load_file(str(tmp_path / BEST))) == trainable_names(model)


def test_trainable_weights_round_trip(tmp_path):
    source, target = tiny_vit(seed=0), tiny_vit(seed=0)
    with torch.no_grad():
        for _name, param in source.named_parameters():
            if param.requires_grad:
                param.add_(1.0)
    save_trainable(source, tmp_path / "w.safetensors")
    load_trainable_file(target, tmp_path / "w.safetensors")
    x = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval()
    assert torch.equal(source(x), target(x))


def test_mismatched_weights_raise(tmp_path):
    model = tiny_vit()
    with pytest.raises(WeightsError, match="do not match"):
        load_trainable(model, {"head.weight": torch.zeros(3, 32)})
    tensors = trainable_state(model)
    tensors["head.weight"] = torch.zeros(5, 32)
    with pytest.raises(WeightsError, match="shape"):
        load_trainable(model, tensors)


def test_missing_or_partial_trainable_file_raises(tmp_path):
    model = tiny_vit()
    with pytest.raises(WeightsError, match="not found"):
        load_trainable_file(model, tmp_path / "absent.safetensors")
    tensors = trainable_state(model)
    tensors["head.weight"] = torch.ones(5, 32)
    before = model.head.bias.detach().clone()
    tensors["head.bias"] = torch.ones(3)
    with pytest.raises(WeightsError, match="head.weight"):
        load_trainable(model, tensors)
    assert torch.equal(model.head.bias, before)  # all or nothing: no tensor was copied


def test_unreadable_checkpoint_raises(tmp_path):
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"not a checkpoint")
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, "adam", 1e-3)
    scheduler = build_scheduler(optimizer, "constant", 10)
    with pytest.raises(WeightsError, match="cannot read"):
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        load_checkpoint(path, model, optimizer, scheduler, scaler)


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
