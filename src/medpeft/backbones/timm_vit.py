"""The ``timm_vit`` backbone family: timm ``VisionTransformer`` and ``Eva`` seen through
:class:`~medpeft.backbones.base.Backbone`.

Register tokens (DINOv2 ``reg4``) sit after [CLS] among the ``num_prefix_tokens``;
the fusion models take patch tokens after all of them. Building these models by name
is :mod:`medpeft.backbones.timm_build`.

EVA attention with a fused ``qkv`` and separate ``q_bias``/``v_bias`` calls
``F.linear(x, qkv.weight, bias)``, bypassing the ``qkv`` module; :meth:`TimmViT.prepare`
switches it to timm's own ``qkv_bias_separate`` path (``qkv(x)`` plus the biases),
so parameter names and outputs stay timm's and an adapter around ``qkv`` is called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import ClassVar

import timm
import torch
from timm.layers.attention import Attention, AttentionRope
from timm.models.eva import Eva, EvaAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medpeft.backbones.base import (
    Backbone,
    Capabilities,
    ImageInput,
    PatchEdit,
    Projection,
    Role,
    patch_problem,
    register_family,
)


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

    @property
    def features_call(self) -> str:
        return "model.forward_head(model.forward_features(images), pre_logits=True)"

    def size_problem(self, size: int) -> str | None:
        """A patch embedding built for one size (``strict_img_size``) takes that size only, else
        multiples of its patch (unless it pads); models without one (ConvNeXt) take any size."""
        embed = getattr(self.module, "patch_embed", None)
        if embed is None:
            return None
        if getattr(embed, "strict_img_size", False) and embed.img_size is not None and embed.img_size != (size, size):
            return f"{self.describe()} takes {embed.img_size[0]} px images only (the img_size it was built at)"
        return patch_problem(self.describe(), size, embed.patch_size[0], getattr(embed, "dynamic_img_pad", False))

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
            patch_grid=self._has_grid(),
            attention_maps=is_vit,
            masked_stream=True,
            feature_map=self._has_grid(),
        )

    @property
    def num_prefix_tokens(self) -> int:
        return self.module.num_prefix_tokens

    @property
    def pools_class_token(self) -> bool:
        return self.module.global_pool == "token"

    def attention_weights(self) -> AbstractContextManager[list[torch.Tensor]]:
        """timm computes attention with fused SDPA, which hides the weights: each block runs its
        explicit softmax path (``fused_attn = False``, restored on exit) and the output of its
        ``attn_drop`` (the weights; identity in eval mode) is recorded. EVA: none."""
        if not self.capabilities.attention_maps:
            raise self.missing("attention maps")
        return self._recording_attention()

    @contextlib.contextmanager
    def _recording_attention(self) -> Iterator[list[torch.Tensor]]:
        weights: list[torch.Tensor] = []
        layers = [_attention_layer(block) for block in self.blocks()]
        fused = [layer.fused_attn for layer in layers]
        handles = [layer.attn_drop.register_forward_hook(lambda _m, _i, out: weights.append(out))
                   for layer in layers]
        try:
            for layer in layers:
                layer.fused_attn = False
            yield weights
        finally:
            for handle in handles:
                handle.remove()
            for layer, value in zip(layers, fused):
                layer.fused_attn = value

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

    def embed(
        self, images: torch.Tensor, patches: PatchEdit | None = None, positioned: PatchEdit | None = None
    ) -> torch.Tensor:
        self._check_stream()
        x = self.module.patch_embed(images)
        x = self.module._pos_embed(x if patches is None else patches(x))
        # Eva's _pos_embed drops patches itself and returns the rotary embedding too (run_block rebuilds it)
        x = x[0] if isinstance(self.module, Eva) else self.module.patch_drop(x)
        return self.module.norm_pre(x if positioned is None else positioned(x))

    def run_block(self, index: int, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        block = self.module.blocks[index]
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        if isinstance(self.module, VisionTransformer):
            return block(tokens, attn_mask=attn_mask)
        self._check_stream()
        rope = self._rope(index, tokens.shape[1] - self.num_prefix_tokens)
        return block(tokens, rope=rope, attn_mask=attn_mask)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.forward_head(self.module.norm(tokens), pre_logits=True)

    def _has_grid(self) -> bool:
        return not self.module.dynamic_img_size and not self._drops_patches()

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


def _attention_layer(block: nn.Module) -> Attention:
    """The timm ``Attention`` of a block, also inside a method's wrapper around the block (MoRA's)."""
    return next(module for module in block.modules() if isinstance(module, Attention))
