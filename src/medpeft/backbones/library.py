"""Build transformers and open_clip backbones by name, from a local folder or file, or at random.

timm backbones are built by :func:`medpeft.backbones.timm_build.build_vit`. Here:

``transformers``: ``name`` is a hub id or a local folder (``config.json`` + weights, as
``save_pretrained`` writes it); ``model_kwargs`` are config fields. Without weights and
without ``pretrained`` the architecture is built at random from ``model_kwargs``, which
then name the ``model_type`` (``dinov2``, ``vit``, ``clip_vision_model``).

``open_clip``: ``name`` is an open_clip model name (``ViT-B-16``) or ``hf-hub:`` id; the
vision tower (``model.visual``) is kept. ``weights`` is a checkpoint of the whole CLIP
model (``visual.*`` keys) or of the tower alone. A model of one's own needs no hub:
``local-dir:/path`` names a folder holding an ``open_clip_config.json`` (``model_cfg``,
optional ``preprocess_cfg``), or a ``vision_cfg`` argument (open_clip's ``CLIPVisionCfg``
fields, with ``embed_dim``) builds the tower alone.

A preset name (``rad-dino``, ``phikon``, ``biomedclip``: :mod:`medpeft.backbones.presets`)
builds that model: its hub id online, its exact architecture at random offline; the
module gets the preset's ``pretrained_cfg`` (input size, mean, std) for the adapter's
preprocessing.

Every load is all-or-error (:mod:`medpeft.backbones.weights`): a checkpoint that leaves
an encoder tensor at its random init is refused, and the tensors left out that belong
to no encoder (a classifier, CLIP's text tower) are named in the log.

``meta=True`` builds the architecture only, on the meta device (shapes, no memory, no
weights read): what :func:`medpeft.model.build_architecture` compares backbones with.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpeft.backbones.hf import PROCESSOR_FILE
from medpeft.backbones.presets import Preset, find_preset
from medpeft.backbones.weights import (
    NON_ENCODER_KEYS,
    check_complete,
    check_loading_info,
    fit_state_dict,
    load_error_line,
    read_state_dict,
)
from medpeft.errors import ConfigError, WeightsError, did_you_mean

VISUAL_PREFIX = "visual."
UNUSED_POOLER = ("pooler.",)
"""transformers tensors that may stay at their init: the families pool without ``ViTModel``'s
tanh pooler, and ViLT trains its pooler with the adapter."""


def build_transformers(
    name: str, pretrained: bool = False, weights: str | Path | None = None, meta: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """A transformers vision encoder (``AutoModel``) by hub id, local folder, preset or config fields."""
    from transformers import AutoConfig, AutoModel

    preset = find_preset(name)
    name = preset.backbone if preset else name
    source = _pretrained_source(name, pretrained, weights)
    if source is None:
        fields = {**(preset.model_kwargs if preset else {}), **model_kwargs}
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ConfigError(f"model.kwargs.model_type: a random {name!r} backbone needs its model_type "
                              "(e.g. dinov2, vit, clip_vision_model) and config fields")
        config = AutoConfig.for_model(model_type, **fields)
    elif meta:
        config = _loading(source, preset, AutoConfig.from_pretrained, **model_kwargs)
    else:
        model = _loading(source, preset, lambda s, **kw: from_pretrained_checked(AutoModel, s, "transformers", **kw),
                         **model_kwargs)
        if pretrained and not Path(source).is_dir():
            _fetch_processor(source)
        return _with_preset(model, preset)
    with torch.device("meta") if meta else contextlib.nullcontext():
        return _with_preset(AutoModel.from_config(config), preset)


def _pretrained_source(name: str, pretrained: bool, weights: str | Path | None) -> str | None:
    """The folder or hub id a transformers backbone loads from (None: built at random)."""
    source = weights if weights is not None else name
    if Path(source).is_dir() or pretrained:
        return str(source)
    if weights is not None:
        raise WeightsError(f"model.weights: {weights} is not a folder (a transformers backbone loads "
                           "a save_pretrained folder: config.json + model.safetensors)")
    return None


def _loading(source: str, preset: Preset | None, load: Callable[..., Any], **kwargs: Any) -> Any:
    """``load(source, **kwargs)`` (a ``from_pretrained``), its errors as one WeightsError."""
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as error:
        hint = f"{preset.access_hint()}; offline, download" if preset else "Offline? Download"
        raise WeightsError(
            f"cannot load the transformers model {source!r} ({error}). {hint} "
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
    """The vision tower of an open_clip model by name or preset, with hub or local weights;
    ``vision_cfg`` (and ``embed_dim``) build the tower alone, offline."""
    preset = find_preset(name)
    if preset is not None and not pretrained:
        model_kwargs = {**preset.model_kwargs, **model_kwargs}
    if meta:  # open_clip moves the model to its device argument
        pretrained, weights, model_kwargs = False, None, {**model_kwargs, "device": "meta"}
    with torch.device("meta") if meta else contextlib.nullcontext():
        tower = _open_clip_tower(preset.backbone if preset else name, pretrained, preset, **model_kwargs)
    if weights is not None:
        load_tower_weights(tower, weights)
    return _with_preset(tower, preset)


def _open_clip_tower(name: str, pretrained: bool, preset: Preset | None, **model_kwargs: Any) -> nn.Module:
    """``model.visual`` of ``open_clip.create_model``, or the tower of a ``vision_cfg`` alone."""
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    vision_cfg = model_kwargs.pop("vision_cfg", None)
    if vision_cfg is not None:
        model_kwargs.pop("text_cfg", None)  # a whole CLIP config: the tower needs its vision part only
        model_kwargs.pop("device", None)
        return _build_vision_tower(model_kwargs.pop("embed_dim", 512), CLIPVisionCfg(**vision_cfg), **model_kwargs)
    if ":" not in name and name not in open_clip.list_models():
        raise ConfigError(
            f"model.backbone: unknown open_clip model {name!r} (see open_clip.list_models(); a config of "
            f"one's own: local-dir:/folder holding open_clip_config.json){did_you_mean(name, open_clip.list_models())}"
        )
    try:
        return open_clip.create_model(name, pretrained="default" if pretrained else None, **model_kwargs).visual
    except FileNotFoundError as error:  # a local-dir: without its files
        raise ConfigError(f"model.backbone: {error}") from error
    except RuntimeError as error:
        mismatch = load_error_line(error)
        if mismatch is not None:  # open_clip loads hub weights strictly
            raise WeightsError(f"the pretrained weights of {name!r} do not match the model: {mismatch}") from error
        raise ConfigError(f"model.backbone: {error}") from error
    except OSError as error:
        hint = preset.access_hint() if preset else "hf-hub ids need the hub or its local cache (HF_HOME)"
        raise WeightsError(f"could not fetch {name!r} from the hub ({type(error).__name__}): {hint}; or "
                           "download the checkpoint and pass it with model.weights") from error


def _with_preset(module: nn.Module, preset: Preset | None) -> nn.Module:
    """``module`` carrying the preset's preprocessing as timm's ``pretrained_cfg``."""
    if preset is not None:
        module.pretrained_cfg = preset.pretrained_cfg()
    return module


def load_tower_weights(tower: nn.Module, path: str | Path) -> None:
    """Load a whole open_clip checkpoint (``visual.*``; its text tower is left out and logged)
    or the tower's own into ``tower``, all of it or nothing."""
    state, own, text = read_state_dict(path), tower.state_dict(), []
    if any(k.startswith(VISUAL_PREFIX) for k in state):
        text = [k for k in state if not k.startswith(VISUAL_PREFIX)]
        check_complete(path, [], [k for k in text if not k.startswith(NON_ENCODER_KEYS["open_clip"])], len(own))
        state = {k.removeprefix(VISUAL_PREFIX): v for k, v in state.items() if k.startswith(VISUAL_PREFIX)}
    tower.load_state_dict(fit_state_dict(state, own, path, "open_clip", dropped_before=text))


def from_pretrained_checked(model_class: Any, source: str | Path, kind: str, **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(source)`` (a transformers class), all of its tensors or a WeightsError.

    transformers loads what matches and leaves the rest at random init; here a missing
    or misshapen tensor is an error naming them (and the checkpoint's ``model_type``
    when it is not the model's), and the unexpected ones that belong to no encoder are
    logged (see :data:`~medpeft.backbones.weights.NON_ENCODER_KEYS` of ``kind``).
    """
    try:
        with _quiet("transformers"):  # its load report would repeat what is checked here
            model, info = model_class.from_pretrained(
                str(source), output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
    except RuntimeError as error:
        raise WeightsError(f"cannot load {source}: {str(error).splitlines()[0]}") from error
    checkpoint_type = _model_type(source)
    hint = "" if checkpoint_type in (None, type(model.config).model_type) else (
        f"a {checkpoint_type} checkpoint given to model.kind {kind}"
    )
    check_loading_info(info, source, kind, len(model.state_dict()), UNUSED_POOLER, hint)
    return model


def _model_type(source: str | Path) -> str | None:
    """``model_type`` of a local folder's ``config.json`` (None if there is none)."""
    try:
        return json.loads((Path(source) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only errors from the logger ``logger_name`` (and its children) inside the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
