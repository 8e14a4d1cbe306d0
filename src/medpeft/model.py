"""Compose a diagnosis model: timm ViT backbone + new head + the chosen tuning method.

Methods (all on the same trainer, so baselines are one flag away):
    ``lora``: MeLo LoRA on q/v (or chosen Linears); LoRA weights and head train.
    ``linear``: linear probe; only the head trains.
    ``full``: full fine-tuning; everything trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from medpeft.adapters.inject import add_lora, freeze_except
from medpeft.backbones.timm_vit import HEAD_NAME, build_vit
from medpeft.errors import ConfigError

METHODS = ("lora", "linear", "full")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (MeLo defaults: q and v, r=4, alpha=4)."""

    targets: Sequence[str] = ("q", "v")
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    blocks: Sequence[int] | None = None


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture (saved with adapters)."""

    backbone: str
    num_classes: int
    method: str = "lora"
    img_size: int | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    model_kwargs: dict = field(default_factory=dict)


def is_trainable(name: str, method: str) -> bool:
    """Whether a parameter trains under ``method``."""
    if method == "full":
        return True
    if name.startswith(HEAD_NAME + "."):
        return True
    return method == "lora" and ".lora_" in name


def build_model(
    spec: ModelSpec,
    pretrained: bool = False,
    weights: str | Path | None = None,
    adapter_name: str = "default",
) -> nn.Module:
    """Build the backbone, attach the method's adapter and freeze what does not train."""
    if spec.method not in METHODS:
        raise ConfigError(f"unknown method {spec.method!r}; expected one of {METHODS}")
    model = build_vit(
        spec.backbone,
        spec.num_classes,
        img_size=spec.img_size,
        pretrained=pretrained,
        weights=weights,
        **spec.model_kwargs,
    )
    if spec.method == "lora":
        lora = spec.lora
        add_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout, lora.blocks, adapter_name)
    freeze_except(model, lambda name: is_trainable(name, spec.method))
    return model
