"""Compose a multimodal diagnosis model: backbone + tuning method + freezing rules.

Kinds:
    ``vilt``: image + text in one ViLT stream (:class:`~medpeft.backbones.vilt.ViltClassifier`).
    ``timm``: image modalities in one timm ViT stream
    (:class:`~medpeft.backbones.multistream.MultiStreamViT`).

Methods (what trains besides the head, the ViLT pooler, and new embeddings:
modality embeddings, missing-image tokens):
    ``mora``: modality-aware LoRA (paper: branch around block 0, r=4).
    ``lora``: plain LoRA (on ViLT ``q``/``k``/``v`` mean ``attention.query``/``key``/``value``).
    ``prompts-input`` / ``prompts-attention``: missing-aware prompts (ViLT only).
    ``linear``: nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from medpeft.adapters.inject import add_lora, freeze_except
from medpeft.adapters.mora import add_mora
from medpeft.adapters.prompts import add_missing_aware_prompts
from medpeft.backbones.multistream import MultiStreamViT
from medpeft.backbones.timm_vit import build_vit
from medpeft.errors import ConfigError
from medpeft.model import LoraSettings

KINDS = ("vilt", "timm")
METHODS = ("mora", "lora", "prompts-input", "prompts-attention", "linear")
DEFAULT_TIMM = "vit_base_patch16_224"
ALWAYS_TRAINED = ("head.", "vilt.pooler.", "modality_embed", "missing_tokens")
METHOD_MARKERS = {
    "mora": ".mora_",
    "lora": ".lora_",
    "prompts-input": ".prompts.",
    "prompts-attention": ".prompts.",
}
VILT_QKV = {"q": "attention.query", "k": "attention.key", "v": "attention.value"}


@dataclass
class MoraSettings:
    """MoRA hyper-parameters (paper: rank 4, a branch around block 0)."""

    rank: int = 4
    blocks: Sequence[int] | None = (0,)
    targets: Sequence[str] | None = None


@dataclass
class PromptSettings:
    """Missing-aware prompt sizes (MAP: 6 layers of 16 tokens)."""

    num_layers: int = 6
    length: int = 16


@dataclass
class MultiModalSpec:
    """Everything needed to rebuild a multimodal model's architecture.

    Attributes:
        kind: ``"vilt"`` or ``"timm"``.
        modalities: Presence-mask column order (ViLT: one text, the rest images).
        num_classes: Head outputs.
        method: One of :data:`METHODS`.
        backbone: ViLT hub id / folder or timm model name (defaults per kind).
        text_modality: Name of the text modality (ViLT).
        missing_token: Learned token for absent images instead of the filled tensor.
        vilt_config: ``ViltConfig`` fields for random init or a weights file.
        max_text_len: Tokens per text (ViLT). Longer than the checkpoint's text position
            table (40): the table is interpolated to this length, frozen like the rest of
            the backbone (:func:`~medpeft.backbones.vilt.resize_text_positions`);
            ``None`` or shorter: the table is kept.
        model_kwargs: ``timm.create_model`` arguments (``img_size``, ``depth``...).
    """

    kind: str
    modalities: Sequence[str]
    num_classes: int
    method: str = "mora"
    backbone: str | None = None
    text_modality: str = "text"
    missing_token: bool = False
    mora: MoraSettings = field(default_factory=MoraSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    vilt_config: dict | None = None
    max_text_len: int | None = None
    model_kwargs: dict = field(default_factory=dict)


def is_trainable(name: str, method: str) -> bool:
    """Whether parameter ``name`` trains under ``method``."""
    if name.startswith(ALWAYS_TRAINED):
        return True
    marker = METHOD_MARKERS.get(method)
    return marker is not None and marker in "." + name


def _backbone(spec: MultiModalSpec, pretrained: bool, weights: str | Path | None) -> nn.Module:
    if spec.kind == "vilt":
        from medpeft.backbones.vilt import (  # transformers
            DEFAULT_VILT,
            ViltClassifier,
            build_vilt,
            resize_text_positions,
        )

        vilt = build_vilt(spec.backbone or DEFAULT_VILT, spec.vilt_config, weights, pretrained)
        length = spec.max_text_len
        if length is not None and not 1 <= length <= vilt.config.max_position_embeddings:
            resize_text_positions(vilt, length)  # longer: interpolated table; below 1: ConfigError
        return ViltClassifier(
            vilt, spec.num_classes, spec.modalities, spec.text_modality, spec.missing_token
        )
    if spec.text_modality in spec.modalities:
        raise ConfigError(f"kind 'timm' is imaging-only; drop the modality {spec.text_modality!r}")
    name = spec.backbone or DEFAULT_TIMM
    vit = build_vit(
        name, spec.num_classes, pretrained=pretrained, weights=weights, **spec.model_kwargs
    )
    return MultiStreamViT(vit, spec.modalities, spec.missing_token)


def _attach(model: nn.Module, spec: MultiModalSpec, adapter_name: str) -> None:
    if spec.method == "mora":
        m = spec.mora
        add_mora(model, spec.modalities, m.rank, m.blocks, m.targets, adapter_name)
    elif spec.method == "lora":
        lora = spec.lora
        targets = lora.targets
        if spec.kind == "vilt":
            targets = [VILT_QKV.get(t, t) for t in targets]
        add_lora(model, targets, lora.rank, lora.alpha, lora.dropout, lora.blocks, adapter_name)
    elif spec.method.startswith("prompts-"):
        if spec.kind != "vilt":
            raise ConfigError(f"method {spec.method!r} needs kind 'vilt'")
        p = spec.prompts
        placement = spec.method.removeprefix("prompts-")
        add_missing_aware_prompts(model, placement, p.num_layers, p.length)


def build_from_spec(
    spec: MultiModalSpec,
    pretrained: bool = False,
    weights: str | Path | None = None,
    adapter_name: str = "default",
) -> nn.Module:
    """Build the backbone, attach the method and freeze what does not train.

    Args:
        spec: Architecture and method.
        pretrained: Load the backbone's hub weights (ViLT: ``spec.backbone`` may be a local folder).
        weights: Local backbone checkpoint (folder or file); takes precedence over ``pretrained``.
        adapter_name: Key of the MoRA/LoRA weights.
    """
    if spec.kind not in KINDS or spec.method not in METHODS:
        raise ConfigError(
            f"kind must be one of {KINDS} and method one of {METHODS}, "
            f"got {spec.kind!r}, {spec.method!r}"
        )
    model = _backbone(spec, pretrained, weights)
    _attach(model, spec, adapter_name)
    freeze_except(model, lambda name: is_trainable(name, spec.method))
    return model


def build_multimodal_model(
    kind: str,
    modalities: Sequence[str],
    num_classes: int,
    method: str = "mora",
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    adapter_name: str = "default",
    **options,
) -> nn.Module:
    """Build a multimodal model; ``options`` are the other :class:`MultiModalSpec` fields.

    Example::

        model = build_multimodal_model("vilt", ["image", "text"], 8, "mora",
                                       weights="vilt-b32-mlm/", mora=MoraSettings(rank=4))
    """
    spec = MultiModalSpec(kind, tuple(modalities), num_classes, method, **options)
    return build_from_spec(spec, pretrained, weights, adapter_name)
