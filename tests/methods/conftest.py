"""Tiny ViT fixtures shared by the method and adapter-file tests (dim 32, depth 2, 32 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import medpeft  # noqa: F401  (torchvision shim before timm)
from medpeft.methods import LoraSettings
from medpeft.model import ModelSpec

BACKBONE = "vit_tiny_patch16_224"
TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)


def _tiny_spec(num_classes: int = 3, **lora) -> ModelSpec:
    settings = LoraSettings(**lora)
    return ModelSpec(BACKBONE, num_classes, img_size=32, model_kwargs=dict(TINY), settings=settings)


def _tiny_vit(num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(BACKBONE, num_classes=num_classes, img_size=32, **TINY).eval()


def _randomize_lora(model: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.fixture
def tiny_spec():
    """``tiny_spec(num_classes=3, **lora)``: a 2-block, 32-dim ViT spec at 32 px."""
    return _tiny_spec


@pytest.fixture
def tiny_vit():
    """``tiny_vit(num_classes=3, seed=0)``: a plain timm ViT of that shape, eval mode."""
    return _tiny_vit


@pytest.fixture
def randomize_lora():
    """``randomize_lora(model, seed=1)``: random LoRA B (zero at init), so adapters act."""
    return _randomize_lora


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def backbone_file(tmp_path: Path) -> Path:
    """A local checkpoint of the tiny backbone (the frozen weights every test shares)."""
    path = tmp_path / "backbone.safetensors"
    state = {k: v.contiguous() for k, v in _tiny_vit(seed=123).state_dict().items()}
    save_file(state, str(path))
    return path
