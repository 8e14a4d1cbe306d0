"""Build timm backbones by name (hub or local weights), check them, load their weights.

:func:`build_vit` creates any timm model a registered family reads: ViT-like
models (``VisionTransformer``: ViT, DeiT incl. distilled, DINOv2 with or without
registers, CLIP ViTs, SwiGLU ViTs such as Virchow; ``Eva``: EVA02 with rotary
position embeddings; :mod:`medpeft.backbones.timm_vit`) and hierarchical ones
(:mod:`medpeft.backbones.timm_hier`: Swin, ConvNeXt). The image size may differ
from the pretraining size: position embeddings are interpolated on load (timm's
checkpoint filter). A size that is not a multiple of the patch size (512 or 256
px with DINOv2's 14 px patches) would make timm drop the last pixels of every row
and column silently; `patch_multiple` gives the nearest multiple instead (518 and
252), which ``medpeft train`` uses for the model and the image transforms alike.

A preset name (``uni``, ``virchow2``, ``retfound``: :mod:`medpeft.backbones.presets`)
stands for its timm architecture and arguments. ``pooling`` is medpeft's argument for
the two poolings timm's ``global_pool`` lacks (:data:`POOLINGS`, :func:`apply_pooling`).

Model arguments from a YAML config are strings: ``mlp_layer: SwiGLUPacked`` and
``act_layer: SiLU`` (see :data:`LAYER_NAMES`) stay strings in the saved config and
are resolved to timm's classes when the model is built.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
from timm.layers import GELUTanh, GluMlp, Mlp, QuickGELU, SwiGLU, SwiGLUPacked
from torch import nn

from medpeft.backbones import presets
from medpeft.backbones.base import (
    families,
)
from medpeft.backbones.hub import check_hub_weights
from medpeft.backbones.weights import (
    NON_ENCODER_KEYS,
    check_complete,
    fit_state_dict,
    load_error_line,
    read_state_dict,
    report_dropped,
)
from medpeft.errors import ConfigError, WeightsError, did_you_mean

HUB_PREFIX = "hf-hub:"

LAYER_NAMES: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "mlp_layer": {"Mlp": Mlp, "GluMlp": GluMlp, "SwiGLUPacked": SwiGLUPacked, "SwiGLU": SwiGLU},
    "act_layer": {"SiLU": nn.SiLU, "GELU": nn.GELU, "GELUTanh": GELUTanh, "QuickGELU": QuickGELU,
                  "ReLU": nn.ReLU},
}
"""Layer arguments given by name in a config: case, ``_`` and a module prefix
(``torch.nn.SiLU``, ``timm.layers.SwiGLUPacked``) do not matter (``silu``, ``quick_gelu``)."""

POOLINGS = {
    "cls_mean": "[CLS, mean of the patch tokens] after the final norm, registers skipped (Virchow)",
    "mae_avg": "mean of the patch tokens through a new LayerNorm (weight 1, bias 0) instead of the "
               "final norm (RETFound / MAE fine-tuning's global_pool)",
}
"""medpeft's ``pooling`` argument of timm ViTs, applied after the weights are loaded."""


def build_vit(
    name: str,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **model_kwargs,
) -> nn.Module:
    """Create a timm backbone with a fresh ``head`` of ``num_classes`` outputs.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224``,
            ``vit_base_patch14_reg4_dinov2.lvd142m`` or ``hf-hub:paige-ai/Virchow2``.
        num_classes: Outputs of the new classification head.
        img_size: Input resolution; position embeddings are resized to it (models without
            a fixed size, such as ConvNeXt, read any size and are built without it).
        pretrained: Download the model's default pretrained weights from the hub.
        weights: Local checkpoint file (safetensors, or .pth/.bin torch state dict);
            takes precedence over ``pretrained``.
        **model_kwargs: Passed to ``timm.create_model`` (e.g. ``depth`` for tiny tests);
            layer names are resolved with :func:`resolve_layers`; ``pooling`` (:data:`POOLINGS`)
            is medpeft's.
    """
    preset = presets.find_preset(name)
    name, model_kwargs = presets.resolve(name, model_kwargs)
    check_backbone(name, **model_kwargs)
    pooling = model_kwargs.pop("pooling", None)
    if img_size is not None and takes_img_size(name, **model_kwargs):
        model_kwargs["img_size"] = img_size
    use_hub = (pretrained and weights is None) or name.startswith(HUB_PREFIX)
    if pretrained and weights is None:
        hint = f"{preset.access_hint()}; download the checkpoint" if preset else "download the checkpoint elsewhere"
        repo = timm_hub_repo(name, model_kwargs.get("pretrained_cfg_overlay"))
        check_hub_weights(preset.name if preset else name, repo, hint)  # offline: one line, not a minute of retries
    try:
        with timm_load_report() as report:
            model = timm.create_model(name, pretrained=use_hub and pretrained, num_classes=num_classes,
                                      **resolve_layers(model_kwargs))
    except (OSError, RuntimeError, ValueError) as error:
        if not use_hub:
            raise
        mismatch = load_error_line(error)
        if mismatch is not None:  # timm loads hub weights strictly
            raise WeightsError(
                f"the pretrained weights of {name!r} do not match the model (do model.kwargs change "
                f"its architecture?): {mismatch}"
            ) from error
        if not pretrained:
            raise WeightsError(
                f"could not fetch the architecture of {name!r} from the hub ({error}); "
                "hf-hub ids need the hub or its local cache (HF_HOME)"
            ) from error
        if preset is not None:
            raise WeightsError(
                f"could not fetch the {preset.name} weights from the hub ({type(error).__name__}): "
                f"{preset.access_hint()}; or download them and pass the file with model.weights"
            ) from error
        raise WeightsError(
            f"could not fetch pretrained weights for {name!r} from the hub ({error}). "
            "Offline? Download the checkpoint elsewhere and pass it with "
            "model.weights=path/to/model.safetensors."
        ) from error
    check_model(model, name)
    check_hub_load(model, name, report)
    if weights is not None:
        load_backbone_weights(model, weights)
    if pooling is not None:
        apply_pooling(model, pooling)
    return model


def timm_hub_repo(name: str, overlay: Mapping[str, Any] | None = None) -> str | None:
    """The hub repo timm fetches the pretrained weights of ``name`` from (None: not the hub).

    ``overlay`` is timm's ``pretrained_cfg_overlay``: a local ``file`` there is not the hub.
    """
    overlay = overlay or {}
    if overlay.get("file") or overlay.get("url"):
        return None
    if overlay.get("hf_hub_id"):
        return overlay["hf_hub_id"]
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX):]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def apply_pooling(model: nn.Module, pooling: str) -> None:
    """Give a timm ``VisionTransformer`` one of medpeft's poolings (:data:`POOLINGS`), in place.

    ``cls_mean`` makes the model's class a subclass whose ``pool`` concatenates [CLS] and the
    mean of the patch tokens (twice the width: the head is rebuilt for it); ``mae_avg`` swaps
    the final norm for a new LayerNorm after timm's mean of the patch tokens (``global_pool avg``).
    """
    if pooling == "cls_mean":
        base = type(model)
        model.__class__ = _CLS_MEAN.setdefault(base, type(f"ClsMean{base.__name__}", (ClsMeanPooling, base), {}))
        model.head_hidden_size = 2 * model.embed_dim
        model.reset_classifier(getattr(model.head, "out_features", 0))
    elif pooling == "mae_avg":
        model.fc_norm = nn.LayerNorm(model.embed_dim, eps=1e-6)
        model.norm = nn.Identity()
        model.global_pool = "avg"


class ClsMeanPooling:
    """Mixin before a timm ``VisionTransformer`` class: pooled features are [CLS, mean of the patches]."""

    num_prefix_tokens: int
    head_hidden_size: int
    head: nn.Module

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        device = next((p.device for p in self.head.parameters()), None)  # a meta build stays on meta
        self.head = nn.Linear(self.head_hidden_size, num_classes, device=device) if num_classes else nn.Identity()


_CLS_MEAN: dict[type, type] = {}


class _LoadReport(logging.Handler):
    """Collects the missing and unexpected keys timm logs when it loads pretrained weights
    without ``strict`` (always when the classifier is new)."""

    PATTERNS: ClassVar[dict[str, re.Pattern]] = {
        "missing": re.compile(r"Missing keys \((.*)\) discovered while loading pretrained weights"),
        "unexpected": re.compile(r"Unexpected keys \((.*)\) found while loading pretrained weights"),
    }

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.keys: dict[str, list[str]] = {kind: [] for kind in self.PATTERNS}

    def emit(self, record: logging.LogRecord) -> None:
        for kind, pattern in self.PATTERNS.items():
            match = pattern.match(record.getMessage())
            if match:
                self.keys[kind] = match.group(1).split(", ")


@contextmanager
def timm_load_report() -> Iterator[dict[str, list[str]]]:
    """The keys timm reports missing or unexpected while it loads pretrained weights inside the
    block; its builder's log stays out of the user's handlers (the keys are checked instead)."""
    logger = logging.getLogger("timm.models._builder")
    report = _LoadReport()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield report.keys
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)
        logger.propagate = propagate


def check_hub_load(model: nn.Module, name: str, report: Mapping[str, list[str]]) -> None:
    """All-or-error for pretrained weights timm loaded: an encoder tensor left at its init, or an
    unexpected tensor of no known non-encoder kind, is a WeightsError; known ones are logged."""
    known = NON_ENCODER_KEYS["timm"]
    missing = [k for k in report["missing"] if not k.startswith(classifier_prefixes(model))]
    unknown = [k for k in report["unexpected"] if not k.startswith(known)]
    source = f"{name} (pretrained weights)"
    check_complete(source, missing, unknown, len(model.state_dict()))
    report_dropped(source, [k for k in report["unexpected"] if k.startswith(known)], known)


def resolve_layers(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` with layer names (``mlp_layer: SwiGLUPacked``) replaced by timm's classes.

    Raises:
        ConfigError: a name not in :data:`LAYER_NAMES`.
    """
    return {key: _layer(key, value) if key in LAYER_NAMES and isinstance(value, str) else value
            for key, value in model_kwargs.items()}


def _layer(key: str, value: str) -> Callable[..., nn.Module]:
    table = {_plain(name): layer for name, layer in LAYER_NAMES[key].items()}
    layer = table.get(_plain(value))
    if layer is None:
        raise ConfigError(
            f"model.kwargs.{key}: unknown layer {value!r}; medpeft accepts "
            f"{', '.join(LAYER_NAMES[key])} (any case, with or without a torch.nn. or timm.layers. prefix)"
        )
    return layer


ACTIVATION_NAMES: dict[Callable[..., nn.Module], str] = {
    nn.SiLU: "silu", nn.GELU: "gelu", GELUTanh: "gelu_tanh", QuickGELU: "quick_gelu", nn.ReLU: "relu",
}
"""timm's own names (``timm.layers.get_act_layer``) of the activations in :data:`LAYER_NAMES`."""


def config_layers(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` as a timm ``config.json`` can hold them: activations by timm's own name.

    Raises:
        ConfigError: a layer a timm config cannot name (``mlp_layer``: timm takes the
            class itself, so plain timm would build another MLP).
    """
    named = {}
    for key, value in model_kwargs.items():
        if key in LAYER_NAMES and isinstance(value, str):
            layer = _layer(key, value)
            if layer not in ACTIVATION_NAMES:
                raise ConfigError(
                    f"model.kwargs.{key}: {value!r} is a layer class, which a timm config.json cannot "
                    "name (timm reads activations by name only), so plain timm would build another model"
                )
            value = ACTIVATION_NAMES[layer]
        named[key] = value
    return named


def check_rebuilds(arch: str, model_args: Mapping[str, Any], model: nn.Module) -> None:
    """ConfigError unless ``timm.create_model(arch, **model_args)`` has ``model``'s tensors
    (names and shapes; built on the meta device)."""
    try:
        plain = _meta_model(arch, **model_args)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"plain timm cannot build {arch} from model_args {dict(model_args)}: {error}") from error
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    built = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    if built != expected:
        differ = sorted(set(built.items()) ^ set(expected.items()))[:3]
        raise ConfigError(f"timm builds another {arch} from model_args {dict(model_args)}: {differ}")


def _plain(name: str) -> str:
    """``torch.nn.SiLU`` -> ``silu``, ``quick_gelu`` -> ``quickgelu``."""
    return name.rsplit(".", 1)[-1].lower().replace("_", "")


def _arch(name: str) -> str:
    """The architecture of a timm name: without the pretrained tag (``.lvd142m``); hub ids whole."""
    return name if name.startswith(HUB_PREFIX) else name.split(".")[0]


def patch_multiple(name: str, img_size: int, **model_kwargs) -> int:
    """``img_size`` rounded to the nearest multiple of the model's patch size (ties: up).

    Models without a patch embedding (ConvNeXt) and ``hf-hub:`` ids, whose architecture
    is only known after a download, keep ``img_size``.

    Args:
        name: timm model name.
        img_size: Wanted input side in pixels.
        **model_kwargs: ``timm.create_model`` arguments (a ``patch_size`` override counts).
    """
    name, model_kwargs = presets.resolve(name, model_kwargs)
    model_kwargs.pop("pooling", None)
    if name.startswith(HUB_PREFIX):
        return img_size
    embed = getattr(_meta_model(_arch(name), **resolve_layers(model_kwargs)), "patch_embed", None)
    if embed is None:
        return img_size
    patch = embed.patch_size[0]
    return max(patch, patch * math.floor(img_size / patch + 0.5))


def takes_img_size(name: str, **model_kwargs) -> bool:
    """Whether the timm model ``name`` is built for one input size (``img_size``); ConvNeXt is not.

    ``hf-hub:`` ids are assumed to be (their architecture is only known after a download);
    ``name`` and ``model_kwargs`` are valid (:func:`check_backbone`).
    """
    if name.startswith(HUB_PREFIX):
        return True
    model = _meta_model(_arch(name), **resolve_layers(model_kwargs))
    return "img_size" in inspect.signature(type(model)).parameters


def check_backbone(name: str, **model_kwargs) -> None:
    """ConfigError unless ``name`` is a timm model a registered family reads (built on the meta device).

    ``hf-hub:`` ids are checked by :func:`build_vit` once the model exists (their
    architecture is in a config on the hub).
    """
    name, model_kwargs = presets.resolve(name, model_kwargs)
    pooling = model_kwargs.pop("pooling", None)
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"model.kwargs.pooling: {pooling!r} is not one of {', '.join(POOLINGS)} "
                          "(timm's own poolings are model.kwargs.global_pool)")
    if name.startswith(HUB_PREFIX):
        return
    arch = _arch(name)
    if not timm.is_model(arch):
        close = did_you_mean(arch, timm.list_models())
        raise ConfigError(f"model.backbone: unknown timm model {name!r} (see timm.list_models()){close}")
    try:
        model = _meta_model(arch, **resolve_layers(model_kwargs))
    except TypeError as error:
        check_model(_meta_model(arch), name)  # a model no family reads is the first thing to say
        raise ConfigError(f"model.kwargs: {name!r} does not take these arguments ({error})") from error
    check_model(model, name)


def _meta_model(arch: str, **model_kwargs) -> nn.Module:
    """The timm model ``arch`` on the meta device: its structure, no memory, no weights."""
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, **model_kwargs)


def check_model(model: nn.Module, name: str) -> None:
    """ConfigError unless a registered timm family reads ``model`` (built from ``name``) and it
    pools its tokens (Virchow's hub config sets ``global_pool: ''``, a head would see every token)."""
    if getattr(model, "global_pool", None) == "" and getattr(model, "attn_pool", None) is None:
        raise ConfigError(
            f"model.kwargs.global_pool: {name!r} is built without pooling (global_pool ''); "
            "set model.kwargs.global_pool to token (class token) or avg (mean of the patch tokens)"
        )
    if any(family.accepts(model) for family in families()):
        return
    readable = "; ".join(
        f"{', '.join(c.__name__ for c in family.reads)} (family {family.family})"
        for family in reversed(families()) if family.library == "timm"
    )
    raise ConfigError(
        f"model.backbone: {name!r} is a {_kind(model)}, which medpeft does not adapt; "
        f"it reads timm {readable}"
    )


def _kind(model: nn.Module) -> str:
    """``VisionTransformer`` or, for a ViT of unusual blocks, ``VisionTransformer of ParallelScalingBlock blocks``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):
        return f"{type(model).__name__} of {type(blocks[0]).__name__} blocks"
    return type(model).__name__


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into a timm model, all of its encoder or nothing; its classifier stays.

    The checkpoint filter of the model's timm module converts original layouts
    (DINOv2, CLIP, DeiT, EVA, Swin, ConvNeXt) and interpolates position embeddings
    to the model's image size. Tensors of no encoder (an MAE decoder and ``mask_token``
    as RETFound ships them, DINO heads, classifiers, CLIP's text tower) are left out and
    logged by name; see :func:`~medpeft.backbones.weights.fit_state_dict`.

    Raises:
        WeightsError: an encoder tensor the checkpoint lacks, a tensor the model lacks
            that is no known non-encoder one, or a tensor of another shape.
    """
    raw = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    try:
        state = filter_fn(dict(raw), model) if filter_fn is not None else raw
    except Exception as error:
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {error}") from error
    own = model.state_dict()
    converted_away = [k for k in raw if k not in state and k not in own and k.startswith(NON_ENCODER_KEYS["timm"])]
    state = fit_state_dict(state, own, path, "timm", classifier_prefixes(model), converted_away)
    model.load_state_dict(state, strict=False)


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier Linears (``head.``, ``head_dist.``; ``head.fc.`` where
    the head also holds a norm of the backbone, as in ConvNeXt)."""
    found = model.get_classifier()
    linears = found if isinstance(found, tuple) else (found,)
    return tuple(f"{name}." for name, module in model.named_modules() if any(module is c for c in linears))


