"""Build transformers and open_clip backbones by name, from a local folder or file, or at random.

timm backbones are built by :func:`medpeft.backbones.timm_vit.build_vit`. Here:

``transformers``: ``name`` is a hub id or a local folder (``config.json`` + weights, as
``save_pretrained`` writes it); ``model_kwargs`` are config fields. Without weights and
without ``pretrained`` the architecture is built at random from ``model_kwargs``, which
then name the ``model_type`` (``dinov2``, ``vit``, ``clip_vision_model``).

``open_clip``: ``name`` is an open_clip model name (``ViT-B-16``) or ``hf-hub:`` id; the
vision tower (``model.visual``) is kept. ``weights`` is a checkpoint of the whole CLIP
model (``visual.*`` keys) or of the tower alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from medpeft.backbones.weights import read_state_dict
from medpeft.errors import ConfigError, WeightsError

VISUAL_PREFIX = "visual."


def build_transformers(
    name: str, pretrained: bool = False, weights: str | Path | None = None, **model_kwargs: Any
) -> nn.Module:
    """A transformers vision encoder (``AutoModel``) by hub id, local folder or config fields."""
    from transformers import AutoConfig, AutoModel

    source = weights if weights is not None else name
    if Path(source).is_dir() or pretrained:
        try:
            return AutoModel.from_pretrained(str(source), **model_kwargs)
        except (OSError, ValueError) as error:
            raise WeightsError(
                f"cannot load the transformers model {str(source)!r} ({error}). Offline? Download "
                "it elsewhere and pass its folder with model.weights=/path/to/folder"
            ) from error
    if weights is not None:
        raise WeightsError(f"model.weights: {weights} is not a folder (a transformers backbone loads "
                           "a save_pretrained folder: config.json + model.safetensors)")
    fields = dict(model_kwargs)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ConfigError(f"model.kwargs.model_type: a random {name!r} backbone needs its model_type "
                          "(e.g. dinov2, vit, clip_vision_model) and config fields")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **fields))


def build_open_clip(
    name: str, pretrained: bool = False, weights: str | Path | None = None, **model_kwargs: Any
) -> nn.Module:
    """The vision tower of an open_clip model by name, with hub or local weights."""
    import open_clip

    try:
        model = open_clip.create_model(name, pretrained="default" if pretrained else None, **model_kwargs)
    except RuntimeError as error:
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
