"""Build any timm Vision Transformer by name, with weights from the hub or a local file.

Covers ViT, DeiT, DINOv2 (with or without registers), CLIP ViTs and other
``timm.models.vision_transformer`` variants. The image size may differ from the
pretraining size: position embeddings are interpolated on load (timm's
checkpoint filter). A size that is not a multiple of the patch size (512 or 256
px with DINOv2's 14 px patches) would make timm drop the last pixels of every row
and column silently; `patch_multiple` gives the nearest multiple instead (518 and
252), which ``medpeft train`` uses for the model and the image transforms alike.
Register tokens (DINOv2 ``reg4``) sit after [CLS] among the ``num_prefix_tokens``;
the fusion models take patch tokens after all of them.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medpeft.backbones.weights import read_state_dict
from medpeft.errors import ConfigError, WeightsError, did_you_mean

_HEAD_PREFIX = "head."  # timm's classifier: the task's own, never read from a backbone checkpoint


def build_vit(
    name: str,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **model_kwargs,
) -> nn.Module:
    """Create a timm ViT classifier with a fresh ``head`` of ``num_classes`` outputs.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224`` or
            ``vit_base_patch14_reg4_dinov2.lvd142m``.
        num_classes: Outputs of the new classification head.
        img_size: Input resolution; position embeddings are resized to it.
        pretrained: Download the model's default pretrained weights from the hub.
        weights: Local checkpoint file (safetensors, or .pth/.bin torch state dict);
            takes precedence over ``pretrained``.
        **model_kwargs: Passed to ``timm.create_model`` (e.g. ``depth`` for tiny tests).
    """
    if img_size is not None:
        model_kwargs["img_size"] = img_size
    check_vit(name)
    use_hub = pretrained and weights is None
    try:
        model = timm.create_model(name, pretrained=use_hub, num_classes=num_classes, **model_kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        if not use_hub:
            raise
        raise WeightsError(
            f"could not fetch pretrained weights for {name!r} from the hub ({error}). "
            "Offline? Download the checkpoint elsewhere and pass it with "
            "--weights path/to/model.safetensors (config key model.weights)."
        ) from error
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def patch_multiple(name: str, img_size: int, **model_kwargs) -> int:
    """``img_size`` rounded to the nearest multiple of the model's patch size (ties: up).

    Args:
        name: timm model name.
        img_size: Wanted input side in pixels.
        **model_kwargs: ``timm.create_model`` arguments (a ``patch_size`` override counts).
    """
    with torch.device("meta"):
        model = timm.create_model(name.split(".")[0], pretrained=False, **model_kwargs)
    patch = model.patch_embed.patch_size[0]
    return max(patch, patch * math.floor(img_size / patch + 0.5))


def check_vit(name: str) -> None:
    """ConfigError unless ``name`` is a timm Vision Transformer (checked on the meta device).

    medpeft adapts timm's ``VisionTransformer`` family: ViT, DeiT, DINOv2, CLIP, ...
    """
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = did_you_mean(arch, timm.list_models("*vit*") + timm.list_models("deit*"))
        raise ConfigError(f"model.backbone: unknown timm model {name!r} (see timm.list_models('vit_*')){close}")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"model.backbone: {name!r} is a {type(model).__name__}, not a Vision Transformer; "
            "medpeft adapts timm ViTs (vit_*, deit_*, *_dinov2, *_clip_*, ...)"
        )


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into a timm ViT, ignoring its classifier head.

    timm's checkpoint filter converts original DINOv2/CLIP/DeiT layouts and
    interpolates position embeddings to the model's image size.
    """
    state = read_state_dict(path)
    filter_fn = timm.models.vision_transformer.checkpoint_filter_fn
    try:
        state = filter_fn(state, model)
    except Exception as error:
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {error}") from error
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIX)}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise WeightsError(f"{path}: tensor shapes do not match the model: {details}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_HEAD_PREFIX)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not match the backbone: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (is it a checkpoint of this architecture?)"
        )


def data_config(model: nn.Module) -> dict:
    """Preprocessing of a timm model: input size, mean, std, interpolation, crop."""
    return timm.data.resolve_data_config({}, model=model)

