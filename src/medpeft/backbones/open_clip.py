"""The ``open_clip`` family: open_clip vision towers (``model.visual``).

Two kinds of tower:

- open_clip's own ``VisionTransformer`` (OpenAI CLIP, LAION OpenCLIP, QuiltNet, ...).
  Blocks ``transformer.resblocks.{i}``; q/k/v are the rows ``[0, w)``, ``[w, 2w)``,
  ``[2w, 3w)`` of the fused ``attn.in_proj`` Linear, out is ``attn.out_proj``; MLP
  ``mlp.c_fc`` (fc1) and ``mlp.c_proj`` (fc2). The blocks hold a torch
  ``nn.MultiheadAttention``, whose forward reads ``in_proj_weight`` and
  ``out_proj.weight`` directly, so an adapter wrapped around ``attn.out_proj`` would
  never run; :meth:`OpenClipBackbone.prepare` swaps each for a :class:`PackedAttention`
  that calls both Linears, with the same outputs and the same state-dict keys.
  Blocks built with open_clip's custom attention (``block_type="custom"``: qk-norm,
  scaled cosine attention, ...) compute q/k/v from ``in_proj_weight`` inside their
  own forward; only their ``out_proj`` is offered. Features are the tower's output
  (pooling, ``ln_post`` and ``proj`` included); the token stream is open_clip's own
  ``_embeds`` (conv1, class embedding, positions, patch dropout, ``ln_pre``) and
  ``_pool`` + ``proj``, so the image size is the tower's (no position interpolation).
  A key mask (early intervention) reaches every block's :class:`PackedAttention` as an
  additive ``[B, 1, 1, N]`` bias (``-inf`` on masked keys); towers with custom attention
  blocks take none.
- ``TimmModel`` (BiomedCLIP, SigLIP): a timm ``trunk`` and open_clip's ``head``
  (projection). Blocks, roles and tokens are those of the trunk's timm family, under
  ``trunk.``; pooled features pass the trunk's classifier (the projection of configs
  without ``timm_proj``, else an identity) and ``head``.

Preprocessing is the tower's ``preprocess_cfg`` (which ``open_clip.create_model`` sets
from the model's config: mean, std, size, interpolation), else open_clip's defaults
(CLIP mean/std, bicubic) at the tower's ``image_size``; towers do not interpolate their
position embeddings, so they read that size only.

Nothing here imports open_clip: the family recognises towers by class name.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.backbones.base import (
    CLIP_MEAN_STD,
    Backbone,
    Capabilities,
    ImageInput,
    PatchEdit,
    Projection,
    Role,
    describe,
    edit_conv_patches,
    preset_input,
    register_family,
)

LIBRARY = "open_clip"
NATIVE_NAMES = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}


def _is_open_clip(module: nn.Module, class_name: str) -> bool:
    kind = type(module)
    return kind.__module__.startswith(LIBRARY + ".") and kind.__name__ == class_name


class PackedAttention(nn.Module):
    """Batch-first ``nn.MultiheadAttention`` whose q/k/v and output projections are called Linears.

    ``in_proj`` is an ``nn.Linear`` holding the attention's own ``in_proj_weight`` and
    ``in_proj_bias`` Parameters; ``out_proj`` is its own ``out_proj``. The state dict
    keeps torch's keys (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``): a state-dict
    hook renames ``in_proj.weight`` and a load pre-hook renames it back, so checkpoints of
    open_clip load and save unchanged. Attention weights are not returned
    (open_clip's blocks ask for none).

    Args:
        attention: The module it replaces (batch first, same q/k/v width).
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if not (attention.batch_first and attention._qkv_same_embed_dim):
            raise ValueError("PackedAttention replaces batch-first self-attention of one width only")
        self.num_heads = attention.num_heads
        self.dropout = attention.dropout
        self.in_proj = nn.Linear(
            attention.embed_dim, 3 * attention.embed_dim, bias=attention.in_proj_bias is not None, device="meta"
        )
        self.in_proj.weight = attention.in_proj_weight
        self.in_proj.bias = attention.in_proj_bias
        self.out_proj = attention.out_proj
        self.register_state_dict_post_hook(_save_native_names)
        self.register_load_state_dict_pre_hook(_load_native_names)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """``(output, None)`` for ``[B, L, width]`` inputs; ``attn_mask`` as in ``nn.MultiheadAttention``
        (``[L, S]`` or ``[B * heads, L, S]``), or an additive ``[B, 1 or heads, 1 or L, S]`` bias
        (:func:`key_bias`)."""
        if need_weights:
            raise ValueError("PackedAttention does not return attention weights (need_weights=False)")
        batch, length, width = query.shape
        heads = [x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for x in self._project(query, key, value)]
        mask = _additive_mask(attn_mask, batch, self.num_heads, heads[0].dtype)
        dropout = self.dropout if self.training else 0.0
        mixed = F.scaled_dot_product_attention(*heads, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(mixed.transpose(1, 2).reshape(batch, length, width)), None

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> list[torch.Tensor]:
        """q, k, v through ``in_proj`` (once for self-attention, else its rows for each input)."""
        if key is query and value is query:
            return list(self.in_proj(query).chunk(3, dim=-1))
        width = query.shape[-1]
        return [self.in_proj(x)[..., i * width : (i + 1) * width] for i, x in enumerate((query, key, value))]


def _additive_mask(
    mask: torch.Tensor | None, batch: int, heads: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s mask for SDPA: boolean True blocks; ``[B * heads, L, S]`` per head."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    if mask.dim() == 3:
        mask = mask.view(batch, heads, *mask.shape[-2:])
    return mask.to(dtype)


def key_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias ``[B, 1, 1, N]`` of a key mask ``Bool[B, N]``: ``-inf`` where False."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    return bias.masked_fill(~key_mask, float("-inf"))[:, None, None, :]


def tower_input(tower: nn.Module) -> ImageInput:
    """The preprocessing open_clip recorded on a vision tower (``preprocess_cfg``), else its defaults."""
    cfg = getattr(tower, "preprocess_cfg", None) or {}
    size = cfg.get("size", tower.image_size)
    return ImageInput(
        size=size if isinstance(size, int) else size[0],
        mean=tuple(cfg.get("mean", CLIP_MEAN_STD[0])),
        std=tuple(cfg.get("std", CLIP_MEAN_STD[1])),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop=1.0,
    )


def _save_native_names(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: torch's key names and order (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``)."""
    for name in ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"):
        if prefix + name in state_dict:
            state_dict[prefix + NATIVE_NAMES.get(name, name)] = state_dict.pop(prefix + name)


def _load_native_names(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load pre-hook: torch's ``in_proj_weight`` / ``in_proj_bias`` go into the ``in_proj`` Linear."""
    for name, native in NATIVE_NAMES.items():
        if prefix + native in state_dict:
            state_dict[prefix + name] = state_dict.pop(prefix + native)


@register_family
class OpenClipBackbone(Backbone):
    """open_clip's own ``VisionTransformer`` tower."""

    family = "open_clip"
    library = LIBRARY

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return _is_open_clip(module, "VisionTransformer")

    @property
    def width(self) -> int:
        proj = self.module.proj
        return proj.shape[1] if proj is not None else self.module.transformer.width

    @property
    def token_width(self) -> int:
        return self.module.transformer.width

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            token_stream=True, cls_token=True, patch_grid=True, attention_maps=False, feature_map=True,
            masked_stream=self._torch_attention(),
        )

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def pools_class_token(self) -> bool:
        return self.module.attn_pool is None and self.module.pool_type == "tok"

    def block_names(self) -> list[str]:
        return [f"transformer.resblocks.{i}" for i in range(len(self.module.transformer.resblocks))]

    def attention(self, index: int) -> dict[Role, Projection]:
        prefix = f"{self.block_names()[index]}.attn"
        out = {"out": Projection(f"{prefix}.out_proj")}
        if not isinstance(self.module.get_submodule(prefix), (nn.MultiheadAttention, PackedAttention)):
            return out  # open_clip's custom attention computes q/k/v from in_proj_weight itself
        width = self.module.transformer.width
        qkv = {role: Projection(f"{prefix}.in_proj", (i * width, (i + 1) * width)) for i, role in enumerate("qkv")}
        return {**qkv, **out}

    def mlp(self, index: int) -> dict[str, Projection]:
        prefix = f"{self.block_names()[index]}.mlp"
        return {"fc1": Projection(f"{prefix}.c_fc"), "fc2": Projection(f"{prefix}.c_proj")}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        output = self.module(images)
        return output[0] if isinstance(output, tuple) else output  # output_tokens=True adds the tokens

    def size_problem(self, size: int) -> str | None:
        """The tower's own image size only (its position embeddings are not interpolated)."""
        height, width = self.module.image_size
        return None if (size, size) == (height, width) else f"{self.describe()} takes {height}x{width} px images only"

    def preprocessing(self) -> ImageInput:
        return preset_input(self.module) or tower_input(self.module)

    def prepare(self) -> None:
        """Replace each block's ``nn.MultiheadAttention`` by a :class:`PackedAttention`."""
        for block in self.blocks():
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = PackedAttention(block.attn)

    def embed(
        self, images: torch.Tensor, patches: PatchEdit | None = None, positioned: PatchEdit | None = None
    ) -> torch.Tensor:
        hooks = []
        if patches is not None:
            hooks.append(self.module.conv1.register_forward_hook(edit_conv_patches(patches)))
        if positioned is not None:  # ln_pre follows the positions (and patch dropout) in _embeds
            hooks.append(self.module.ln_pre.register_forward_pre_hook(lambda _m, args: (positioned(args[0]),)))
        try:
            return self.module._embeds(images)
        finally:
            for hook in hooks:
                hook.remove()

    def run_block(self, index: int, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Block ``index``; a ``key_mask`` goes to its :class:`PackedAttention` (put in place here)."""
        block = self.module.transformer.resblocks[index]
        if key_mask is None:
            return block(tokens)
        if not self._torch_attention():
            self.refuse_mask(key_mask)
        self.prepare()
        return block(tokens, attn_mask=key_bias(key_mask.to(tokens.device), tokens.dtype))

    def _torch_attention(self) -> bool:
        """Every block attends with torch's attention (``nn.MultiheadAttention`` or :class:`PackedAttention`)."""
        return all(isinstance(block.attn, (nn.MultiheadAttention, PackedAttention)) for block in self.blocks())

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.module._pool(tokens)
        return pooled if self.module.proj is None else pooled @ self.module.proj


@register_family
class OpenClipTimmBackbone(Backbone):
    """open_clip's ``TimmModel`` tower: the trunk's timm family view, then open_clip's head."""

    family = "open_clip"
    library = LIBRARY

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.trunk = describe(module.trunk)

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return _is_open_clip(module, "TimmModel")

    @property
    def width(self) -> int:
        """Outputs of the last Linear of the trunk's classifier and the head, else the trunk's width."""
        parts = (self.module.trunk.get_classifier(), self.module.head)
        linears = [m for part in parts for m in part.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else self.trunk.width

    @property
    def token_width(self) -> int:
        return self.trunk.token_width

    @property
    def capabilities(self) -> Capabilities:
        return self.trunk.capabilities

    @property
    def num_prefix_tokens(self) -> int:
        return self.trunk.num_prefix_tokens

    @property
    def pools_class_token(self) -> bool:
        return self.trunk.pools_class_token

    def attention_weights(self) -> AbstractContextManager[list[torch.Tensor]]:
        return self.trunk.attention_weights()

    def feature_map(self, activation: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return self.trunk.feature_map(activation, image_size)

    def block_names(self) -> list[str]:
        return [f"trunk.{name}" for name in self.trunk.block_names()]

    def attention(self, index: int) -> dict[Role, Projection]:
        return {role: _in_trunk(p) for role, p in self.trunk.attention(index).items()}

    def mlp(self, index: int) -> dict[str, Projection]:
        return {key: _in_trunk(p) for key, p in self.trunk.mlp(index).items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    def size_problem(self, size: int) -> str | None:
        return self.trunk.size_problem(size)

    def preprocessing(self) -> ImageInput:
        return preset_input(self.module) or tower_input(self.module)

    def prepare(self) -> None:
        self.trunk.prepare()

    def embed(
        self, images: torch.Tensor, patches: PatchEdit | None = None, positioned: PatchEdit | None = None
    ) -> torch.Tensor:
        return self.trunk.embed(images, patches, positioned)

    def run_block(self, index: int, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.trunk.run_block(index, tokens, key_mask)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.head(self.module.trunk.get_classifier()(self.trunk.pool(tokens)))


def _in_trunk(projection: Projection) -> Projection:
    return replace(projection, module=f"trunk.{projection.module}")
