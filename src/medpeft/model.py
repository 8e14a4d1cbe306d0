"""The one composition root: a :class:`ModelSpec` -> backbone + fusion + method + head.

Fusion follows from the spec: ``kind: vilt`` is ViLT over image + text
(:class:`~medpeft.fusion.vilt.ViltClassifier`); a timm ViT with one image
modality is the plain timm model (:func:`~medpeft.fusion.single.as_single_stream`,
parameter names unchanged), any other backbone with one image modality (timm Swin
and ConvNeXt, transformers, open_clip) sits under
:class:`~medpeft.fusion.pooled.PooledClassifier`; several image modalities (or learned
missing tokens) share one timm ViT token stream with modality embeddings
(:class:`~medpeft.fusion.concat.MultiStreamViT`); early intervention gives every
modality a target and a reference copy of the one-modality model
(:class:`~medpeft.fusion.intervention.EarlyIntervention`). :func:`check_fusion` refuses the
fusions a backbone cannot run before anything is built. The method comes from the
registry (:mod:`medpeft.methods`); everything but the method's parameters and the
fusion's new ones (head, pooler, modality embeddings) is frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medpeft.backbones.base import CapabilityError, describe
from medpeft.backbones.presets import find_preset, preset_kind
from medpeft.backbones.timm_build import build_vit
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import cast_frozen, low_precision_build, restore_trainable
from medpeft.fusion.concat import MultiStreamViT
from medpeft.fusion.intervention import EarlyIntervention
from medpeft.fusion.late import LateFusion
from medpeft.fusion.pooled import PooledClassifier
from medpeft.fusion.single import as_single_stream
from medpeft.methods import Method, get_method
from medpeft.methods.layers import freeze_except

KINDS = ("timm", "transformers", "open_clip", "vilt")
LIBRARY_KINDS = ("transformers", "open_clip")
DEFAULT_BACKBONES = {
    "timm": "vit_base_patch16_224",
    "transformers": "facebook/dinov2-base",
    "open_clip": "ViT-B-16",
    "vilt": "dandelin/vilt-b32-mlm",
}


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture (saved with adapters).

    Attributes:
        backbone: timm model name, or ViLT hub id / folder (``None``: the kind's default,
            ``vit_base_patch16_224`` or ``dandelin/vilt-b32-mlm``), or a preset name
            (``uni``, ``rad-dino``: :mod:`medpeft.backbones.presets`), which sets ``kind``
            and, when ``None``, ``img_size``; ``model_kwargs`` override the preset's.
        num_classes: Head outputs.
        method: A registered method (``lora``, ``mora``, ``prompts``, ``linear``, ``full``...).
        settings: The method's settings dataclass (``None``: its defaults).
        img_size: Input resolution (timm: position embeddings are resized to it; an open_clip
            tower reads its own size only).
        modalities: Presence-mask column order; ``("image",)`` for one image.
        kind: ``timm`` (image modalities), ``transformers``, ``open_clip`` or ``vilt`` (image +
            text); ``None``: the preset's, else ``timm``.
        text_modality: Name of the text modality (ViLT).
        missing_token: Replace absent images' patch embeddings by a learned token.
        vilt_config: ``ViltConfig`` fields for random init or a weights file.
        max_text_len: Tokens per text (ViLT; longer than 40: the table is interpolated).
        model_kwargs: Extra ``timm.create_model`` arguments (``depth``, ``drop_rate``...).
        fusion: ``auto`` (as above), ``early_intervention`` (a target and a reference
            classifier per image modality over a timm ViT, transformers or open_clip ViT,
            :class:`~medpeft.fusion.intervention.EarlyIntervention`)
            or ``late`` (one ViT per modality, features joined at the end,
            :class:`~medpeft.fusion.late.LateFusion`).
    """

    backbone: str | None
    num_classes: int
    method: str = "lora"
    settings: Any = None
    img_size: int | None = None
    modalities: Sequence[str] = ("image",)
    kind: Literal["timm", "transformers", "open_clip", "vilt"] | None = None
    text_modality: str = "text"
    missing_token: bool = False
    vilt_config: dict | None = None
    max_text_len: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    fusion: Literal["auto", "early_intervention", "late"] = "auto"

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.kind = preset_kind(self.backbone, self.kind)
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind: {self.kind!r} is not one of {KINDS}")
        self.backbone = self.backbone or DEFAULT_BACKBONES[self.kind]
        preset = find_preset(self.backbone)
        if preset is not None and self.img_size is None:
            self.img_size = preset.img_size
        method = get_method(self.method)
        if self.settings is None:
            self.settings = method.settings_type()
        elif not isinstance(self.settings, method.settings_type):
            raise ConfigError(
                f"method {self.method!r} takes {method.settings_type.__name__}, "
                f"got {type(self.settings).__name__}"
            )

    def settings_dict(self) -> dict:
        """The method settings as plain data."""
        return dataclasses.asdict(self.settings)


def build_model(
    spec: ModelSpec,
    pretrained: bool = False,
    weights: str | Path | None = None,
    adapter_name: str = "default",
    frozen_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build backbone + fusion, attach the method's adapter and freeze what does not train.

    Args:
        spec: Architecture and method.
        pretrained: Load the backbone's hub weights.
        weights: Local backbone checkpoint (file, or a ViLT folder); wins over ``pretrained``.
        adapter_name: Key of the adapter's weights in the model.
        frozen_dtype: dtype of the frozen Linear/Conv layers (:mod:`medpeft.frozen_dtype`); a low
            one is built layer by layer in it (:func:`~medpeft.frozen_dtype.low_precision_build`),
            never as a whole fp32 model, unless the method trains everything.
    """
    method = get_method(spec.method)
    check_frozen_dtype(method, frozen_dtype)
    with low_precision_build(torch.float32 if method.trains_everything else frozen_dtype):
        model = _fusion_model(spec, pretrained, weights)
    attach_method(model, method, spec.settings, adapter_name)
    restore_trainable(model)
    cast_frozen(model, frozen_dtype)
    return model


def check_frozen_dtype(method: Method, frozen_dtype: torch.dtype, key: str = "model.frozen_dtype") -> None:
    """ConfigError when ``method`` cannot run on frozen weights held in ``frozen_dtype`` (``key``
    names the setting)."""
    if frozen_dtype == torch.int8 and method.reads_frozen_weights:
        raise ConfigError(
            f"{key}: int8 does not apply to method {method.name!r}: its layers compute "
            "with the frozen weights' values; use bfloat16"
        )


def attach_method(model: nn.Module, method: Method, settings: Any, adapter_name: str = "default") -> None:
    """Attach ``method``'s adapter to a fusion model and freeze all it does not train.

    Raises:
        CapabilityError: the method needs a token stream the model does not offer.
    """
    if method.needs_tokens and method.only_kind is None:  # such a method names its kind itself
        check_token_stream(model, method.name)
    method.attach(model, settings, adapter_name)
    freeze_except(model, lambda name: name.startswith(model.trained_prefixes) or method.is_trainable(name))


def check_token_stream(model: nn.Module, method: str) -> None:
    """CapabilityError unless every backbone of ``model`` has a token stream medpeft's fusions read."""
    for view in model.backbone_views().values() if hasattr(model, "backbone_views") else ():
        view.require("token_stream", f"method {method!r}")
    if isinstance(model, PooledClassifier):
        raise CapabilityError(
            f"method {method!r} acts on a token stream of several modalities; {model.view.describe()} "
            "reads one image here: give it data.modalities (see the capability table in docs/methods.md)"
        )


def input_size_problem(model: nn.Module, size: int) -> str | None:
    """Why ``model`` cannot take square images of ``size`` px (None: it can): its own answer
    (ViLT), that of its first backbone that cannot, or a bare backbone's."""
    own = getattr(model, "size_problem", None)
    if own is not None:
        return own(size)
    views = model.backbone_views().values() if hasattr(model, "backbone_views") else [describe(model)]
    return next((problem for view in views if (problem := view.size_problem(size))), None)


def wrap_backbone(backbone: nn.Module, num_classes: int, modality: str = "image") -> nn.Module:
    """The one-modality fusion model around a native backbone module, with a new head.

    A timm ViT-like model stays itself (:func:`~medpeft.fusion.single.as_single_stream`,
    its classifier reset to ``num_classes``); any other family goes under
    :class:`~medpeft.fusion.pooled.PooledClassifier`.
    """
    if describe(backbone).family == "timm_vit":
        backbone.reset_classifier(num_classes)
    return _one_image(backbone, num_classes, modality)


def _one_image(backbone: nn.Module, num_classes: int, modality: str) -> nn.Module:
    """A timm ViT as itself (its head classifies); other families under a PooledClassifier (a
    timm classifier of their own is dropped: the new head classifies their pooled features)."""
    view = describe(backbone)
    if view.family == "timm_vit":
        return as_single_stream(backbone, modality)
    if view.library == "timm":
        backbone.reset_classifier(0)
    return PooledClassifier(backbone, num_classes, modality)


FUSION_NEEDS = {
    "auto": "a backbone with a token stream (timm ViTs, transformers, open_clip)",
    "early_intervention": "a backbone whose blocks take an attention mask (timm ViTs, transformers, open_clip ViTs)",
    "late": "a timm ViT (model.kind: timm, family timm_vit)",
}
"""What each fusion needs of its backbone when it reads more than one image modality."""


def check_fusion(spec: ModelSpec) -> None:
    """CapabilityError unless the fusion ``spec`` asks for can read its backbone.

    Several image modalities in one token stream and learned missing tokens need a
    backbone with a token stream (timm ViTs, transformers, open_clip); early intervention
    needs blocks that take a key mask (checked on a transformers or open_clip backbone
    once built, :func:`_library_intervention`); late fusion is built from timm ViTs (family
    ``timm_vit``). A timm backbone is built on the meta device (no memory, no weights) to
    find its family.
    """
    user = _fusion_user(spec)
    if user is None or spec.kind == "vilt":
        return
    if spec.kind in LIBRARY_KINDS:
        if spec.fusion != "late":
            return
        what = f"model.kind {spec.kind!r} ({spec.backbone})"
    else:
        with torch.device("meta"):
            view = describe(build_vit(spec.backbone, spec.num_classes, spec.img_size, **spec.model_kwargs))
        if view.family == "timm_vit":
            return
        what = f"{spec.backbone} ({type(view.module).__name__}, family {view.family})"
    raise _fusion_refusal(spec, what, user)


def _fusion_refusal(spec: ModelSpec, what: str, user: str) -> CapabilityError:
    """The one-line refusal of ``spec``'s fusion on the backbone ``what``, for ``user`` (:func:`_fusion_user`)."""
    return CapabilityError(
        f"{what} takes one image modality with model.fusion: auto; {user} needs {FUSION_NEEDS[spec.fusion]} "
        "(see the capability table in docs/methods.md)"
    )


def check_architecture(spec: ModelSpec, weights: str | Path | None = None, pretrained: bool = False) -> None:
    """Build ``spec`` with its method on the meta device (no memory, no weights): the ConfigError
    or CapabilityError a real build would raise (a fusion or method its backbone cannot run, a
    target no layer matches), before anything is written or trained. ViLT checks itself when built.
    """
    if spec.kind == "vilt":
        return
    model = build_architecture(spec, weights, pretrained)
    with torch.device("meta"):
        attach_method(model, get_method(spec.method), spec.settings)


def _fusion_user(spec: ModelSpec) -> str | None:
    """What in ``spec`` reads more than one image modality's model (None: one image modality, fusion ``auto``)."""
    if spec.fusion != "auto":
        return f"model.fusion {spec.fusion!r}"
    if spec.missing_token:
        return "data.missing_image: token (a learned token per missing image)"
    if len(spec.modalities) > 1:
        return f"reading {len(spec.modalities)} image modalities in one token stream"
    return None


def build_architecture(
    spec: ModelSpec, weights: str | Path | None = None, pretrained: bool = False
) -> nn.Module:
    """``spec``'s fusion model without its method, on the meta device: every tensor's shape,
    no memory, no weights read.

    ``weights`` (a folder) and ``pretrained`` (a hub id) say where a transformers backbone's
    ``config.json`` is; other kinds ignore them.
    """
    with torch.device("meta"):
        return _fusion_model(spec, pretrained, weights, meta=True)


def set_backbone_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout layer outside the adapters (``lora_dropout``) to probability ``p``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and "lora_dropout" not in name:
            module.p = p


def _fusion_model(
    spec: ModelSpec, pretrained: bool, weights: str | Path | None, meta: bool = False
) -> nn.Module:
    """The fusion model of ``spec`` without method (``meta``: its architecture only, no weights read)."""
    if spec.kind == "vilt":
        return _vilt_model(spec, pretrained, weights)
    check_fusion(spec)
    if spec.kind in LIBRARY_KINDS:
        return _library_model(spec, _library_backbone(spec, pretrained, weights, meta))
    if spec.text_modality in spec.modalities:
        raise ConfigError(f"kind 'timm' is imaging-only; drop the modality {spec.text_modality!r}")
    if meta:
        pretrained, weights = False, None

    def vit() -> nn.Module:
        return build_vit(
            spec.backbone, spec.num_classes, img_size=spec.img_size,
            pretrained=pretrained, weights=weights, **spec.model_kwargs,
        )

    if spec.fusion == "early_intervention":
        start = torch.get_rng_state()  # every copy is the backbone a one-modality build draws

        def copy() -> nn.Module:
            torch.set_rng_state(start)
            return vit()

        targets = {m: copy() for m in spec.modalities}
        return EarlyIntervention(targets, {m: copy() for m in spec.modalities})
    if spec.fusion == "late":
        start = torch.get_rng_state()
        encoders = {}
        for m in spec.modalities:
            torch.set_rng_state(start)
            encoders[m] = vit()
        return LateFusion(encoders, spec.num_classes)
    if len(spec.modalities) == 1 and not spec.missing_token:
        return _one_image(vit(), spec.num_classes, spec.modalities[0])
    return MultiStreamViT(vit(), spec.modalities, spec.missing_token, spec.num_classes)


def _library_backbone(
    spec: ModelSpec, pretrained: bool, weights: str | Path | None, meta: bool = False
) -> nn.Module:
    """The native transformers model or open_clip tower of ``spec`` (``meta``: the architecture only)."""
    from medpeft.backbones.library import build_open_clip, build_transformers

    build = build_transformers if spec.kind == "transformers" else build_open_clip
    return build(spec.backbone, pretrained, weights, meta, **spec.model_kwargs)


def _library_model(spec: ModelSpec, backbone: nn.Module) -> nn.Module:
    """A transformers or open_clip backbone: one image modality under a PooledClassifier, or
    several in one token stream (:class:`~medpeft.fusion.concat.MultiStreamViT`).

    Raises:
        ConfigError: ``spec.img_size`` differs from an open_clip tower's one input size.
    """
    if spec.fusion == "early_intervention":
        model = _library_intervention(spec, backbone)
    elif len(spec.modalities) == 1 and not spec.missing_token:
        model = PooledClassifier(backbone, spec.num_classes, spec.modalities[0])
    else:
        model = MultiStreamViT(backbone, spec.modalities, spec.missing_token, spec.num_classes)
    view = next(iter(model.backbone_views().values()))
    size = view.preprocessing()["size"] if spec.kind == "open_clip" else None
    if size is not None and spec.img_size not in (None, size):
        raise ConfigError(
            f"model.img_size: {spec.img_size}, but the open_clip tower {spec.backbone} reads {size} px "
            f"images only (its position embeddings are not interpolated); set model.img_size: {size} or null"
        )
    return model


def _library_intervention(spec: ModelSpec, backbone: nn.Module) -> EarlyIntervention:
    """Early intervention over copies of the one-modality model of ``backbone`` (a
    PooledClassifier): every target and reference starts with the same backbone and head.

    Raises:
        CapabilityError: the backbone's blocks take no key mask (open_clip custom attention).
    """
    view = describe(backbone)
    if not view.capabilities.masked_stream:
        what = f"model.kind {spec.kind!r} ({spec.backbone}: {view.describe()}, family {view.family})"
        raise _fusion_refusal(spec, what, _fusion_user(spec))
    single = PooledClassifier(backbone, spec.num_classes)
    targets = {m: deepcopy(single) for m in spec.modalities}
    return EarlyIntervention(targets, {m: deepcopy(single) for m in spec.modalities})


def _vilt_model(spec: ModelSpec, pretrained: bool, weights: str | Path | None) -> nn.Module:
    from medpeft.backbones.vilt import build_vilt, resize_text_positions
    from medpeft.fusion.vilt import ViltClassifier  # transformers

    vilt = build_vilt(spec.backbone, spec.vilt_config, weights, pretrained)
    length = spec.max_text_len
    if length is not None and not 1 <= length <= vilt.config.max_position_embeddings:
        resize_text_positions(vilt, length)  # longer: interpolated table; below 1: ConfigError
    return ViltClassifier(
        vilt, spec.num_classes, spec.modalities, spec.text_modality, spec.missing_token
    )
