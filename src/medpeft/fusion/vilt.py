"""ViLT image + text fusion (Kim et al., ICML 2021), run block by block.

:class:`ViltClassifier` consumes the batch dict, embeds text and
image tokens with Hugging Face ``ViltModel``'s embedding modules, runs the
encoder layers itself (so MoRA branches and missing-aware prompts can act
between and inside blocks), then the final LayerNorm, the pooler (first
token, ``dim x dim`` + tanh) and the MoRA/MAP head
``Linear(dim, 2 dim) -> LayerNorm -> GELU -> Linear(2 dim, C)``.

Image tokens: every patch in raster order (ViLT's patch sampling is not used;
the pooled output does not depend on patch order), position embeddings
interpolated bilinearly when the grid differs from the config's, one image
[CLS] token per image. Several image modalities, or ``K`` images of one
modality (``[B, K, 3, H, W]``), append their tokens one after another.
Missing inputs are the dataset's tensors; with ``missing_token=True`` a learned
token replaces the patch embeddings of absent images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViltModel

from medpeft.backbones.base import patch_problem
from medpeft.errors import ConfigError, DataError
from medpeft.fusion.base import routed
from medpeft.methods.prompts.layer import split_key_value

TEXT_TYPE, IMAGE_TYPE = 0, 1


def vilt_head(dim: int, num_classes: int) -> nn.Sequential:
    """``Linear(dim, 2 dim) -> LayerNorm -> GELU -> Linear(2 dim, C)``, ViLT init (normal 0.02)."""
    head = nn.Sequential(
        nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, num_classes)
    )
    for layer in (head[0], head[3]):
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return head


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, L]`` 1/0 keep mask -> ``[B, 1, 1, L]`` additive attention bias."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def attend_with_prefix(
    layer: nn.Module,
    x: torch.Tensor,
    bias: torch.Tensor,
    key_prefix: torch.Tensor,
    value_prefix: torch.Tensor,
) -> torch.Tensor:
    """One ``ViltLayer`` whose self-attention also sees prefix keys and values.

    Args:
        layer: A ``ViltLayer`` (pre-norm attention + MLP, both residual).
        x: Tokens ``[B, L, dim]``.
        bias: Additive attention bias ``[B, 1, 1, L]`` for the tokens.
        key_prefix, value_prefix: ``[B, P, dim]``, always attended.
    """
    attn = layer.attention.attention
    h = layer.layernorm_before(x)
    query = _heads(attn.query(h), attn.num_attention_heads)
    key = _heads(torch.cat([key_prefix, attn.key(h)], 1), attn.num_attention_heads)
    value = _heads(torch.cat([value_prefix, attn.value(h)], 1), attn.num_attention_heads)
    bias = F.pad(bias, (key_prefix.shape[1], 0))
    scores = query @ key.transpose(-1, -2) / math.sqrt(attn.attention_head_size) + bias
    context = attn.dropout(scores.softmax(-1)) @ value
    x = x + layer.attention.output(context.transpose(1, 2).flatten(2), h)
    return layer.output(layer.intermediate(layer.layernorm_after(x)), x)


class ViltClassifier(nn.Module):
    """ViLT classifier over the multimodal batch dict, run block by block.

    Args:
        vilt: A ``ViltModel`` with its pooler.
        num_classes: Outputs of the head.
        modalities: Presence-mask column order, e.g. ``("image", "text")``.
        text_modality: The text modality's name; every other is an image modality.
        missing_token: Replace absent images' patch embeddings by a learned token.
    """

    trained_prefixes = ("head.", "vilt.pooler.", "missing_tokens")
    target_aliases: ClassVar[dict[str, str]] = {
        "q": "attention.query", "k": "attention.key", "v": "attention.value"
    }

    def __init__(
        self,
        vilt: ViltModel,
        num_classes: int,
        modalities: Sequence[str] = ("image", "text"),
        text_modality: str = "text",
        missing_token: bool = False,
    ) -> None:
        super().__init__()
        if text_modality not in modalities or len(modalities) < 2:
            raise ConfigError(
                f"ViLT needs the text modality {text_modality!r} and at least one image modality, "
                f"got modalities {tuple(modalities)}"
            )
        if vilt.pooler is None:
            raise ConfigError("ViLT needs a ViltModel with its pooler (add_pooling_layer=True)")
        self.vilt = vilt
        self.modalities = tuple(modalities)
        self.image_modalities = [m for m in self.modalities if m != text_modality]
        self.dim = vilt.config.hidden_size
        self.head = vilt_head(self.dim, num_classes)
        self.missing_tokens = None
        if missing_token:
            tokens = torch.randn(len(self.image_modalities), self.dim) * 0.02
            self.missing_tokens = nn.Parameter(tokens)
        self.prompts = None

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vilt.encoder.layer

    def size_problem(self, size: int) -> str | None:
        """Images of any multiple of the patch size go through (positions are interpolated)."""
        return patch_problem(type(self.vilt).__name__, size, self.vilt.config.patch_size)

    def text_tokens(self, text: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """BERT embeddings of the token ids plus the text type embedding."""
        emb = self.vilt.embeddings
        length, positions = text["input_ids"].shape[1], self.vilt.config.max_position_embeddings
        if length > positions:
            raise DataError(
                f"{length} text tokens but ViLT has {positions} text positions; build the model "
                f"with max_text_len={length} (config key model.max_text_len) to interpolate them"
            )
        tokens = emb.text_embeddings(input_ids=text["input_ids"])
        return tokens + emb.token_type_embeddings.weight[TEXT_TYPE]

    def _positions(self, height: int, width: int) -> torch.Tensor:
        """Patch position embeddings ``[1, height*width, dim]``, resized if needed."""
        pos = self.vilt.embeddings.position_embeddings[:, 1:]
        side = self.vilt.config.image_size // self.vilt.config.patch_size
        if (height, width) == (side, side):
            return pos
        grid = pos.transpose(1, 2).unflatten(-1, (side, side))
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)
        return grid.flatten(2).transpose(1, 2)

    def image_tokens(self, pixels: torch.Tensor, present: torch.Tensor, index: int) -> torch.Tensor:
        """Tokens ``[B, K*(1+N), dim]`` of one image modality ``[B, (K,) 3, H, W]``."""
        emb = self.vilt.embeddings
        flat = pixels.flatten(0, pixels.dim() - 4)
        x = emb.patch_embeddings(flat)
        if self.missing_tokens is not None:
            keep = present.repeat_interleave(flat.shape[0] // pixels.shape[0])[:, None, None, None]
            x = torch.where(keep, x, self.missing_tokens[index][:, None, None].to(x.dtype))
        x = x.flatten(2).transpose(1, 2) + self._positions(*x.shape[-2:])
        cls = emb.cls_token + emb.position_embeddings[:, :1]
        x = emb.dropout(torch.cat([cls.expand(x.shape[0], -1, -1), x], 1))
        x = x + emb.token_type_embeddings.weight[IMAGE_TYPE]
        return x.reshape(pixels.shape[0], -1, self.dim)

    def embed(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """Text tokens then each image modality's tokens, and their 1/0 attention mask."""
        missing = [m for m in self.image_modalities if m not in batch.get("images", {})]
        if "text" not in batch:
            missing.insert(0, "text")
        if missing:
            raise DataError(
                f"ViLT batch needs 'text' and images for {self.image_modalities}; "
                f"missing {missing}"
            )
        present = batch["present"]
        tokens = [self.text_tokens(batch["text"])]
        masks = [batch["text"]["attention_mask"]]
        for i, m in enumerate(self.image_modalities):
            column = present[:, self.modalities.index(m)]
            tokens.append(self.image_tokens(batch["images"][m], column, i))
            masks.append(masks[0].new_ones(tokens[-1].shape[:2]))
        return torch.cat(tokens, 1), torch.cat(masks, 1)

    def encode(
        self, x: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        """Run the layers, inserting prompts; return the tokens and the count of prompt tokens."""
        num_prompts = 0
        bias = additive_mask(mask, x.dtype)  # rebuilt only when input prompts extend the mask
        for i, layer in enumerate(self.blocks):
            prompt = prompts[:, i] if prompts is not None and i < prompts.shape[1] else None
            if prompt is not None and self.prompts.placement == "input":
                x = torch.cat([prompt.to(x.dtype), x], 1)
                mask = torch.cat([mask.new_ones(prompt.shape[:2]), mask], 1)
                num_prompts += prompt.shape[1]
                bias = additive_mask(mask, x.dtype)
            if prompt is not None and self.prompts.placement == "attention":
                x = attend_with_prefix(layer, x, bias, *split_key_value(prompt.to(x.dtype)))
            else:
                x = layer(x, bias)[0]
        return x, num_prompts

    def forward_features(self, batch: Mapping) -> torch.Tensor:
        """Pooled ``[B, dim]`` features of a batch."""
        with routed(self, batch) as present:
            tokens, mask = self.embed(batch)
            prompts = None if self.prompts is None else self.prompts(present)
            x, num_prompts = self.encode(tokens, mask, prompts)
        return self.vilt.pooler(self.vilt.layernorm(x)[:, num_prompts:])

    def forward(self, batch: Mapping) -> torch.Tensor:
        return self.head(self.forward_features(batch))
