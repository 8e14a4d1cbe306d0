"""Build transformers and open_clip backbones by name, from a local folder or file, or at random.

timm backbones are built by :func:`medpeft.backbones.timm_vit.build_vit`. Here:

``transformers``: ``name`` is a hub id or a local folder (``config.json`` + weights, as
``save_pretrained`` writes it); ``model_kwargs`` are config fields. Without weights and
without ``pretrained`` the architecture is built at random from ``model_kwargs``, which
then name the ``model_type`` (``dinov2``, ``vit``, ``clip_vision_model``).

``open_clip``: ``name`` is an open_clip model name (``ViT-B-16``) or ``hf-hub:`` id; the
vision tower (``model.visual``) is kept. ``weights`` is a checkpoint of the whole CLIP
model (``visual.*`` keys) or of the tower alone. A model of one's own needs no hub:
``local-dir:/path`` names a folder holding an ``open_clip_config.json`` (``model_cfg``,
optional ``preprocess_cfg``) and, optionally, its weights.

``meta=True`` builds the architecture only, on the meta device (shapes, no memory, no
weights read): what :func:`medpeft.model.build_architecture` compares backbones with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpeft.backbones.hf import PROCESSOR_FILE
from medpeft.backbones.weights import read_state_dict
from medpeft.errors import ConfigError, WeightsError, did_you_mean

VISUAL_PREFIX = "visual."


def build_transformers(
    name: str, pretrained: bool = False, weights: str | Path | None = None, meta: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """A transformers vision encoder (``AutoModel``) by hub id, local folder or config fields."""
    from transformers import AutoConfig, AutoModel

    source = _pretrained_source(name, pretrained, weights)
    if source is None:
        fields = dict(model_kwargs)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ConfigError(f"model.kwargs.model_type: a random {name!r} backbone needs its model_type "
                              "(e.g. dinov2, vit, clip_vision_model) and config fields")
        config = AutoConfig.for_model(model_type, **fields)
    elif meta:
        config = _loading(source, AutoConfig.from_pretrained, **model_kwargs)
    else:
        model = _loading(source, AutoModel.from_pretrained, **model_kwargs)
        if pretrained and not Path(source).is_dir():
            _fetch_processor(source)
        return model
    with torch.device("meta") if meta else contextlib.nullcontext():
        return AutoModel.from_config(config)


def _pretrained_source(name: str, pretrained: bool, weights: str | Path | None) -> str | None:
    """The folder or hub id a transformers backbone loads from (None: built at random)."""
    source = weights if weights is not None else name
    if Path(source).is_dir() or pretrained:
        return str(source)
    if weights is not None:
        raise WeightsError(f"model.weights: {weights} is not a folder (a transformers backbone loads "
                           "a save_pretrained folder: config.json + model.safetensors)")
    return None


def _loading(source: str, load: Callable[..., Any], **kwargs: Any) -> Any:
    """``load(source, **kwargs)`` (a ``from_pretrained``), its errors as one WeightsError."""
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as error:
        raise WeightsError(
            f"cannot load the transformers model {source!r} ({error}). Offline? Download "
            "it elsewhere and pass its folder with model.weights=/path/to/folder"
        ) from error


def _fetch_processor(repo: str) -> None:
    """Put the hub model's ``preprocessor_config.json`` in the hub cache, where the family's
    preprocessing finds it (a model without one keeps its class's defaults)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    with contextlib.suppress(EntryNotFoundError):
        hf_hub_download(repo, PROCESSOR_FILE)


def build_open_clip(
    name: str, pretrained: bool = False, weights: str | Path | None = None, meta: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """The vision tower of an open_clip model by name, with hub or local weights."""
    import open_clip

    if ":" not in name and name not in open_clip.list_models():
        raise ConfigError(
            f"model.backbone: unknown open_clip model {name!r} (see open_clip.list_models(); a config of "
            f"one's own: local-dir:/folder holding open_clip_config.json){did_you_mean(name, open_clip.list_models())}"
        )
    if meta:
        pretrained, weights, model_kwargs = False, None, {**model_kwargs, "device": "meta"}
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = open_clip.create_model(name, pretrained="default" if pretrained else None, **model_kwargs)
    except (RuntimeError, FileNotFoundError) as error:  # a name without config, a local-dir: without files
        raise ConfigError(f"model.backbone: {error}") from error
    tower = model.visual
    if weights is not None:
        state = read_state_dict(weights)
        if any(k.startswith(VISUAL_PREFIX) for k in state):
            state = {k.removeprefix(VISUAL_PREFIX): v for k, v in state.items() if k.startswith(VISUAL_PREFIX)}
        result = tower.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsError(f"{weights} does not fit the {name} vision tower: missing "
                               f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return tower
