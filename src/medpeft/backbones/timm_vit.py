"""timm backbones by name (hub or local weights) and the ``timm_vit`` family.

:func:`build_vit` creates any timm model a registered family reads: ViT-like
models here (``VisionTransformer``: ViT, DeiT incl. distilled, DINOv2 with or
without registers, CLIP ViTs, SwiGLU ViTs such as Virchow; ``Eva``: EVA02 with
rotary position embeddings) and hierarchical ones in
:mod:`medpeft.backbones.timm_hier` (Swin, ConvNeXt). The image size may differ
from the pretraining size: position embeddings are interpolated on load (timm's
checkpoint filter). A size that is not a multiple of the patch size (512 or 256
px with DINOv2's 14 px patches) would make timm drop the last pixels of every row
and column silently; `patch_multiple` gives the nearest multiple instead (518 and
252), which ``medpeft train`` uses for the model and the image transforms alike.
Register tokens (DINOv2 ``reg4``) sit after [CLS] among the ``num_prefix_tokens``;
the fusion models take patch tokens after all of them.

Model arguments from a YAML config are strings: ``mlp_layer: SwiGLUPacked`` and
``act_layer: SiLU`` (see :data:`LAYER_NAMES`) stay strings in the saved config and
are resolved to timm's classes when the model is built.

EVA attention with a fused ``qkv`` and separate ``q_bias``/``v_bias`` calls
``F.linear(x, qkv.weight, bias)``, bypassing the ``qkv`` module; :meth:`TimmViT.prepare`
switches it to timm's own ``qkv_bias_separate`` path (``qkv(x)`` plus the biases),
so parameter names and outputs stay timm's and an adapter around ``qkv`` is called.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
from timm.layers import GELUTanh, GluMlp, Mlp, QuickGELU, SwiGLU, SwiGLUPacked
from timm.layers.attention import Attention, AttentionRope
from timm.models.eva import Eva, EvaAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medpeft.backbones.base import (
    Backbone,
    Capabilities,
    ImageInput,
    Projection,
    Role,
    families,
    register_family,
)
from medpeft.backbones.weights import read_state_dict
from medpeft.errors import ConfigError, WeightsError, did_you_mean

HUB_PREFIX = "hf-hub:"

LAYER_NAMES: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "mlp_layer": {"Mlp": Mlp, "GluMlp": GluMlp, "SwiGLUPacked": SwiGLUPacked, "SwiGLU": SwiGLU},
    "act_layer": {"SiLU": nn.SiLU, "GELU": nn.GELU, "GELUTanh": GELUTanh, "QuickGELU": QuickGELU,
                  "ReLU": nn.ReLU},
}
"""Layer arguments given by name in a config: case, ``_`` and a module prefix
(``torch.nn.SiLU``, ``timm.layers.SwiGLUPacked``) do not matter (``silu``, ``quick_gelu``)."""


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
            layer names are resolved with :func:`resolve_layers`.
    """
    check_backbone(name, **model_kwargs)
    if img_size is not None and takes_img_size(name, **model_kwargs):
        model_kwargs["img_size"] = img_size
    use_hub = (pretrained and weights is None) or name.startswith(HUB_PREFIX)
    try:
        model = timm.create_model(name, pretrained=use_hub and pretrained, num_classes=num_classes,
                                  **resolve_layers(model_kwargs))
    except (OSError, RuntimeError, ValueError) as error:
        if not use_hub:
            raise
        if not pretrained:
            raise WeightsError(
                f"could not fetch the architecture of {name!r} from the hub ({error}); "
                "hf-hub ids need the hub or its local cache (HF_HOME)"
            ) from error
        raise WeightsError(
            f"could not fetch pretrained weights for {name!r} from the hub ({error}). "
            "Offline? Download the checkpoint elsewhere and pass it with "
            "--weights path/to/model.safetensors (config key model.weights)."
        ) from error
    check_model(model, name)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


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
    """Load a local checkpoint into a timm model, ignoring its classifier.

    The checkpoint filter of the model's timm module converts original layouts
    (DINOv2, CLIP, DeiT, EVA, Swin, ConvNeXt) and interpolates position embeddings
    to the model's image size.
    """
    state = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    try:
        state = filter_fn(state, model) if filter_fn is not None else state
    except Exception as error:
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {error}") from error
    classifier = classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise WeightsError(f"{path}: tensor shapes do not match the model: {details}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not match the backbone: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (is it a checkpoint of this architecture?)"
        )


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier Linears (``head.``, ``head_dist.``; ``head.fc.`` where
    the head also holds a norm of the backbone, as in ConvNeXt)."""
    found = model.get_classifier()
    linears = found if isinstance(found, tuple) else (found,)
    return tuple(f"{name}." for name, module in model.named_modules() if any(module is c for c in linears))


def data_config(model: nn.Module) -> dict:
    """Preprocessing of a timm model: input size, mean, std, interpolation, crop."""
    return timm.data.resolve_data_config({}, model=model)


def timm_input(model: nn.Module) -> ImageInput:
    """A timm model's preprocessing (its pretrained config's; timm's defaults for other modules)."""
    cfg = data_config(model)
    return ImageInput(
        size=cfg["input_size"][-1], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"], crop=cfg["crop_pct"],
    )


def fused_qkv(name: str, qkv: nn.Linear) -> dict[Role, Projection]:
    """q, k and v as thirds of the outputs of the fused Linear ``name`` (timm's order)."""
    third = qkv.out_features // 3
    return {role: Projection(name, (i * third, (i + 1) * third)) for i, role in enumerate(("q", "k", "v"))}


def mlp_linears(name: str, mlp: nn.Module) -> dict[str, Projection]:
    """The Linears of a timm MLP ``name`` by attribute: ``fc1`` (packed gate+up in ``GluMlp``
    and ``SwiGLUPacked``) or ``fc1_g``/``fc1_x`` (``SwiGLU``), then ``fc2``; none for 1x1 convolutions."""
    return {
        attr: Projection(f"{name}.{attr}")
        for attr in ("fc1", "fc1_g", "fc1_x", "fc2")
        if isinstance(getattr(mlp, attr, None), nn.Module) and not isinstance(getattr(mlp, attr), nn.Conv2d)
    }


class TimmBackbone(Backbone):
    """What timm models share: pooled features are ``forward_head(forward_features(x), pre_logits=True)``."""

    library = "timm"
    reads: ClassVar[tuple[type[nn.Module], ...]]
    """The timm model classes (and subclasses) the family reads, for :meth:`accepts` and messages."""

    @property
    def width(self) -> int:
        return getattr(self.module, "head_hidden_size", None) or self.module.num_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.forward_head(self.module.forward_features(images), pre_logits=True)

    def preprocessing(self) -> ImageInput:
        return timm_input(self.module)


@register_family
class TimmViT(TimmBackbone):
    """timm ``VisionTransformer`` (blocks of timm ``Attention``) and ``Eva`` (EVA02, rotary embeddings).

    Roles of block ``i`` (``blocks.{i}``): q/k/v are thirds of ``attn.qkv``, or EVA's
    separate ``attn.q_proj``/``k_proj``/``v_proj`` (``qkv_fused=False``); out is
    ``attn.proj``; the MLP Linears are ``mlp.fc1``/``mlp.fc2`` (``fc1`` packs gate and up
    for ``GluMlp``/``SwiGLUPacked``) or ``mlp.fc1_g``/``fc1_x``/``fc2`` (timm's ``SwiGLU``).
    """

    family = "timm_vit"
    reads = (VisionTransformer, Eva)

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        attention = (EvaAttention, AttentionRope) if isinstance(module, Eva) else (Attention,)
        return isinstance(module, cls.reads) and all(
            isinstance(getattr(block, "attn", None), attention) and hasattr(block, "mlp")
            for block in module.blocks
        )

    @property
    def capabilities(self) -> Capabilities:
        is_vit = isinstance(self.module, VisionTransformer)
        return Capabilities(
            token_stream=is_vit or self._fixed_rope(),
            cls_token=self.module.cls_token is not None,
            patch_grid=not self.module.dynamic_img_size and not self._drops_patches(),
            attention_maps=is_vit,
        )

    @property
    def num_prefix_tokens(self) -> int:
        return self.module.num_prefix_tokens

    def block_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.module.blocks))]

    def attention(self, index: int) -> dict[Role, Projection]:
        name = f"blocks.{index}.attn"
        attn = self.module.get_submodule(name)
        if attn.qkv is not None:
            roles = fused_qkv(f"{name}.qkv", attn.qkv)
        else:
            roles = {role: Projection(f"{name}.{role}_proj") for role in ("q", "k", "v")}
        return {**roles, "out": Projection(f"{name}.proj")}

    def mlp(self, index: int) -> dict[str, Projection]:
        name = f"blocks.{index}.mlp"
        return mlp_linears(name, self.module.get_submodule(name))

    def prepare(self) -> None:
        """EVA attention with ``q_bias``/``v_bias`` calls ``self.qkv(x)`` and adds the biases after."""
        for block in self.blocks():
            if isinstance(block.attn, EvaAttention):
                block.attn.qkv_bias_separate = True

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self._check_stream()
        x = self.module._pos_embed(self.module.patch_embed(images))
        # Eva's _pos_embed drops patches itself and returns the rotary embedding too (run_block rebuilds it)
        x = x[0] if isinstance(self.module, Eva) else self.module.patch_drop(x)
        return self.module.norm_pre(x)

    def run_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        block = self.module.blocks[index]
        if isinstance(self.module, VisionTransformer):
            return block(tokens)
        self._check_stream()
        return block(tokens, rope=self._rope(index, tokens.shape[1] - self.num_prefix_tokens))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.forward_head(self.module.norm(tokens), pre_logits=True)

    def _drops_patches(self) -> bool:
        drop = self.module.patch_drop
        return drop is not None and not isinstance(drop, nn.Identity)

    def _fixed_rope(self) -> bool:
        """An EVA's rotary embedding depends on the token count alone (no dynamic size, dropped
        patches or coordinate augmentation), so :meth:`run_block` can rebuild it."""
        rope = self.module.rope
        if rope is None:
            return True
        return not (self.module.dynamic_img_size or self._drops_patches() or getattr(rope, "aug_active", False))

    def _check_stream(self) -> None:
        if not self.capabilities.token_stream:
            raise self.missing(
                "token stream: its rotary embedding depends on the image size, dropped patches "
                "or random coordinates, not on the tokens alone"
            )

    def _rope(self, index: int, patches: int) -> torch.Tensor | None:
        """Rotary embedding of block ``index`` for ``patches`` patch tokens: the grid's, repeated
        for each image whose patches follow one another in the stream."""
        rope = self.module.rope
        if rope is None:
            return None
        grid = self.module.patch_embed.grid_size
        embed = rope.get_embed() if hasattr(rope, "feat_shape") else rope.get_embed(shape=grid)
        if self.module.rope_mixed:
            embed = embed[index]
        cells = grid[0] * grid[1]
        if patches % cells:
            raise self.missing(f"stream of {patches} patch tokens (not whole {grid[0]}x{grid[1]} grids)")
        return embed.repeat(*[1] * (embed.dim() - 2), patches // cells, 1)
