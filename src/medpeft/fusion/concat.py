"""Token-concatenation fusion: several image modalities in one timm ViT stream.

Every image modality is patch-embedded by the ViT's shared patch embedding,
gets the ViT's position embedding and a learned embedding of its modality; all
modalities' patch tokens follow one [CLS] (plus register tokens, if the ViT
has them) in a single sequence, which runs through the blocks one by one (so
MoRA branches see the batch's presence mask), the final norm, the ViT's
pooling and a new ``head``. ``K`` images of one modality (``[B, K, 3, H, W]``,
e.g. MRI slices) contribute all their tokens, one image after another (no
averaging), each with the same position and modality embeddings.

Missing images are whatever tensor the dataset filled in; with
``missing_token=True`` a learned token per modality replaces the patch
embeddings of absent images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medpeft.backbones.base import Backbone, describe
from medpeft.errors import ConfigError, DataError
from medpeft.fusion.base import routed


class MultiStreamViT(nn.Module):
    """A timm VisionTransformer over the multimodal batch dict of image modalities.

    Args:
        vit: timm ``VisionTransformer`` with a classification ``head``; the head
            moves to ``self.head``.
        modalities: Image modality names in presence-mask column order.
        missing_token: Replace absent images' patch embeddings by a learned token.
    """

    trained_prefixes = ("head.", "modality_embed", "missing_tokens")

    def __init__(
        self, vit: nn.Module, modalities: Sequence[str], missing_token: bool = False
    ) -> None:
        super().__init__()
        if not modalities:
            raise ConfigError("MultiStreamViT needs at least one image modality")
        if not hasattr(vit, "patch_embed") or not hasattr(vit, "blocks"):
            raise ConfigError(
                f"MultiStreamViT needs a timm VisionTransformer, got {type(vit).__name__}"
            )
        self.modalities = tuple(modalities)
        self.dim = vit.embed_dim
        self.head = vit.head
        vit.head = nn.Identity()
        self.vit = vit
        self.modality_embed = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)
        self.missing_tokens = None
        if missing_token:
            self.missing_tokens = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)

    def backbone_views(self) -> dict[str, Backbone]:
        """The one ViT of the stream, by its qualified name."""
        return {"vit": describe(self.vit)}

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    def modality_tokens(
        self, pixels: torch.Tensor, present: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix tokens ``[B, P, dim]`` and patch tokens ``[B, K*N, dim]`` of one modality."""
        batch = pixels.shape[0]
        flat = pixels.flatten(0, pixels.dim() - 4)
        x = self.vit.patch_embed(flat)
        if self.missing_tokens is not None:
            keep = present.repeat_interleave(flat.shape[0] // batch)
            keep = keep.reshape(-1, *[1] * (x.dim() - 1))
            x = torch.where(keep, x, self.missing_tokens[index].to(x.dtype))
        x = self.vit._pos_embed(x)
        num_prefix = self.vit.num_prefix_tokens
        prefix = x[:, :num_prefix].unflatten(0, (batch, -1))[:, 0]
        patches = x[:, num_prefix:] + self.modality_embed[index].to(x.dtype)
        return prefix, patches.reshape(batch, -1, self.dim)

    def embed(self, batch: Mapping) -> torch.Tensor:
        """One sequence: the prefix tokens, then every modality's patch tokens."""
        images = batch.get("images", {})
        missing = [m for m in self.modalities if m not in images]
        if missing:
            raise DataError(f"batch has no images for {missing}; expected {self.modalities}")
        present = batch["present"]
        parts = [
            self.modality_tokens(images[m], present[:, i], i) for i, m in enumerate(self.modalities)
        ]
        x = torch.cat([parts[0][0], *(patches for _, patches in parts)], 1)
        return self.vit.norm_pre(self.vit.patch_drop(x))

    def forward_features(self, batch: Mapping) -> torch.Tensor:
        """Normed tokens ``[B, P + sum_m K_m N, dim]`` after all blocks."""
        with routed(self, batch):
            x = self.embed(batch)
            for block in self.blocks:
                x = block(x)
        return self.vit.norm(x)

    def forward(self, batch: Mapping) -> torch.Tensor:
        return self.head(self.vit.forward_head(self.forward_features(batch)))
