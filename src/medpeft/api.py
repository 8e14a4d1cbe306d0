"""The short public API: adapt a vision foundation model, save its adapter, load it back.

Example::

    import medpeft, timm

    model = medpeft.adapt("vit_base_patch16_224", medpeft.LoraSettings(rank=4), num_classes=2,
                          weights="vit_b16.safetensors")
    logits = model(images)                     # [B, 2]
    features = model.features(images)         # pooled features of the backbone
    model.save_adapter("adapters/tb", labels=["normal", "tb"])
    model = medpeft.load_adapter("adapters/tb")            # rebuilds the recorded backbone

    native = transformers.Dinov2Model(config)             # any module of a known family
    model = medpeft.adapt(native, medpeft.LoraSettings(), num_classes=3)
    model = medpeft.load_adapter("adapters/x", backbone=native_again)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpeft.adapters_io.folder import HUB, adapter_parameters, read_adapter_folder, read_config, save_adapter
from medpeft.adapters_io.folder import load_adapter as load_adapter_folder
from medpeft.backbones.base import describe, native_name
from medpeft.backbones.weights import copy_weights
from medpeft.checkpointing import enable_checkpointing
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import cast_frozen, frozen_dtype_named
from medpeft.methods import method_for_settings
from medpeft.model import ModelSpec, attach_method, build_model, check_frozen_dtype, wrap_backbone


class AdaptedModel(nn.Module):
    """A frozen backbone with a task adapter and a head; what :func:`adapt` returns.

    Attributes:
        model: The composed model (backbone + fusion + method + head); the parameter
            names of adapter files are relative to it.
        spec: What rebuilds it (:class:`~medpeft.model.ModelSpec`).
        adapter_name: Name of the adapter inside the model.
        backbone_weights: Where the backbone's weights came from: a file, ``"hub"``,
            or ``None`` (random init or a module passed in; unknown to medpeft).
        spec_rebuilds: Whether ``spec`` rebuilds the backbone (False for a module passed
            in: loading its adapter needs ``backbone=`` again).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        adapter_name: str = "default",
        backbone_weights: str | None = None,
        spec_rebuilds: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.adapter_name = adapter_name
        self.backbone_weights = backbone_weights
        self.spec_rebuilds = spec_rebuilds

    def forward(self, x: Any) -> torch.Tensor:
        """Logits of an image tensor ``[B, 3, H, W]`` or a batch dict."""
        return self.model(x)

    def features(self, x: Any) -> torch.Tensor:
        """Pooled backbone features ``[B, width]`` (what the head reads)."""
        return self.model.features(x)

    @property
    def backbone(self) -> nn.Module:
        """The native module of the backbone (timm, transformers or open_clip)."""
        views = self.model.backbone_views()
        if len(views) != 1:
            raise ConfigError(f"this model has {len(views)} backbones: {sorted(views)}")
        prefix = next(iter(views))
        return self.model.get_submodule(prefix) if prefix else self.model

    @property
    def head(self) -> nn.Module:
        """The classification head."""
        return self.model.head

    def save_adapter(
        self, folder: str | Path, labels: list[str] | None = None, task: str = "multiclass"
    ) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``folder``.

        Args:
            folder: Output folder.
            labels: Names of the head's outputs (default ``class_0``, ``class_1``...).
            task: ``multiclass`` (softmax) or ``multilabel`` (sigmoid).
        """
        labels = labels or [f"class_{i}" for i in range(self.spec.num_classes)]
        return save_adapter(
            self.model, folder, self.spec, labels, task,
            adapter_name=self.adapter_name, backbone_weights=self.backbone_weights,
            spec_rebuilds=self.spec_rebuilds,
        )


def adapt(
    backbone: nn.Module | str | Path,
    settings: Any = None,
    num_classes: int = 2,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    img_size: int | None = None,
    kind: str | None = None,
    adapter_name: str = "default",
    activation_checkpointing: bool = False,
    frozen_dtype: str = "float32",
    **model_kwargs: Any,
) -> AdaptedModel:
    """Freeze ``backbone``, attach the method of ``settings`` and a new head.

    Args:
        backbone: A module of a known family (timm, transformers, open_clip vision
            tower), adapted in place; or a name: a preset (``"uni"``, ``"rad-dino"``, see
            :func:`medpeft.backbone_presets`), a timm model name or ``hf-hub:`` id
            (``kind="timm"``), a transformers hub id or ``save_pretrained`` folder
            (``kind="transformers"``, found by itself for a folder), an open_clip
            model name (``kind="open_clip"``).
        settings: A method's settings, e.g. ``LoraSettings(rank=4)`` (default: MeLo's LoRA).
        num_classes: Outputs of the new head.
        pretrained: For a name: load the library's pretrained weights (network).
        weights: For a name: a local checkpoint of the backbone.
        img_size: For a name: the input size (position embeddings are resized; default:
            a preset's recommended size).
        kind: Library of a named backbone (default: a preset's, else ``timm``).
        adapter_name: Name of the adapter inside the model.
        activation_checkpointing: Recompute each backbone block's activations in backward
            instead of keeping them (:func:`medpeft.checkpointing.enable_checkpointing`;
            per-call routing holds during the recomputation).
        frozen_dtype: ``float32``, ``bfloat16``, ``float16`` or ``int8`` (weight-only, torchao):
            dtype of the frozen Linear and Conv layers (:mod:`medpeft.frozen_dtype`; adapters and
            head stay fp32). A named
            backbone is built in it layer by layer (never as a whole fp32 model); a module
            passed in is cast.
        **model_kwargs: For a name: architecture arguments of the library's constructor.
    """
    method = method_for_settings(settings)
    settings = settings if settings is not None else method.settings_type()
    dtype = frozen_dtype_named(frozen_dtype)
    if isinstance(backbone, (str, Path)):
        backbone = str(backbone)
        if kind is None and (Path(backbone) / "config.json").is_file():  # a save_pretrained folder
            kind, weights = "transformers", weights or backbone
        spec = ModelSpec(
            backbone, num_classes, method.name, settings, img_size=img_size,
            kind=kind, model_kwargs=dict(model_kwargs),
        )
        model = build_model(spec, pretrained=pretrained, weights=weights, adapter_name=adapter_name,
                            frozen_dtype=dtype)
        adapted = AdaptedModel(model, spec, adapter_name, _weights_record(weights, pretrained))
    elif isinstance(backbone, nn.Module):
        spec = module_spec(backbone, num_classes, method.name, settings)
        check_frozen_dtype(method, dtype)
        model = wrap_backbone(backbone, num_classes)
        attach_method(model, method, settings, adapter_name)
        cast_frozen(model, dtype)
        adapted = AdaptedModel(model, spec, adapter_name, spec_rebuilds=False)
    else:
        raise ConfigError(f"backbone: expected an nn.Module or a name, got {type(backbone).__name__}")
    if activation_checkpointing:
        enable_checkpointing(adapted.model)
    return adapted


def load_adapter(
    folder: str | Path,
    backbone: nn.Module | None = None,
    *,
    weights: str | Path | None = None,
    pretrained: bool = False,
    adapter_name: str | None = None,
    allow_other_weights: bool = False,
    frozen_dtype: str = "float32",
) -> AdaptedModel:
    """Load an adapter folder onto its backbone.

    Args:
        folder: An adapter folder written by :meth:`AdaptedModel.save_adapter`,
            ``medpeft train`` or ``medpeft import-lora-vit``.
        backbone: A native module to put the adapter on (adapted in place); ``None``
            rebuilds the recorded backbone (weights: the recorded checkpoint, or
            ``weights``/``pretrained``).
        weights: Backbone checkpoint when rebuilding.
        pretrained: Load the library's pretrained backbone when rebuilding.
        adapter_name: Name inside the model (default: the folder's name).
        allow_other_weights: When rebuilding, accept backbone weights other than those the
            adapter records (another sha256) with a warning; refused otherwise. A ``backbone``
            module passed in is not checked.
        frozen_dtype: ``float32``, ``bfloat16``, ``float16`` or ``int8``: dtype of the frozen
            Linear and Conv layers, as in :func:`adapt` (a rebuilt backbone is built in it, a
            module passed in is cast); the adapter and head are loaded in fp32, as saved.
    """
    dtype = frozen_dtype_named(frozen_dtype)
    if backbone is None:
        model, config = load_adapter_folder(folder, adapter_name=adapter_name, weights=weights,
                                            pretrained=pretrained, allow_other_weights=allow_other_weights,
                                            frozen_dtype=dtype)
        name = adapter_name or Path(folder).resolve().name
        recorded = str(weights) if weights else (HUB if pretrained else config.backbone_weights)
        return AdaptedModel(model, config.to_spec(), name, recorded)
    config = read_config(folder)
    if config.kind == "vilt" or len(config.modalities) != 1 or config.fusion != "auto":
        raise ConfigError(f"{folder}: a {config.kind} adapter over {list(config.modalities)} "
                          "needs its own model; load it with backbone=None")
    _, state, source = read_adapter_folder(folder)
    method = method_for_settings(config.method_settings())
    check_frozen_dtype(method, dtype, "frozen_dtype")
    model = wrap_backbone(backbone, config.num_classes)
    name = adapter_name or Path(folder).resolve().name
    attach_method(model, method, config.method_settings(), name)
    copy_weights(adapter_parameters(model, name, method), state, source)
    cast_frozen(model, dtype)
    return AdaptedModel(model, config.to_spec(), name, spec_rebuilds=False)


def module_spec(module: nn.Module, num_classes: int, method: str, settings: Any) -> ModelSpec:
    """The spec recorded for a backbone module passed in (its name as its library knows it)."""
    view = describe(module)
    name = native_name(module) or type(module).__name__
    return ModelSpec(name, num_classes, method, settings, kind=view.library)


def _weights_record(weights: str | Path | None, pretrained: bool) -> str | None:
    if weights is not None:
        return str(Path(weights).resolve())
    return HUB if pretrained else None
