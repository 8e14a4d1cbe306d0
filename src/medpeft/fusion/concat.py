"""Token-concatenation fusion: several image modalities in one transformer's token stream.

Every image modality is patch-embedded by the backbone's shared patch embedding,
gets the backbone's position embedding and a learned embedding of its modality
(before the norm some models apply ahead of block 0); all modalities' patch tokens
follow one [CLS] (plus register tokens, if the backbone has them) in a single
sequence, which runs through the blocks one by one (so MoRA branches see the
batch's presence mask), the final norm, the backbone's pooling and the ``head``. ``K`` images of one modality (``[B, K, 3, H, W]``,
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
    """A vision transformer over the multimodal batch dict of image modalities.

    Reads the backbone only through its family view (:mod:`medpeft.backbones.base`):
    any backbone with a token stream (timm ViTs, transformers, open_clip towers).

    Args:
        vit: The native backbone; a timm classifier ``head`` moves to ``self.head``,
            other families get a new ``Linear(width -> classes)``.
        modalities: Image modality names in presence-mask column order.
        missing_token: Replace absent images' patch embeddings by a learned token.
        num_classes: Outputs of a new head (backbones without their own).
    """

    trained_prefixes = ("head.", "modality_embed", "missing_tokens")

    def __init__(
        self,
        vit: nn.Module,
        modalities: Sequence[str],
        missing_token: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not modalities:
            raise ConfigError("MultiStreamViT needs at least one image modality")
        self.view = describe(vit)
        self.view.require("token_stream", "several image modalities in one stream")
        self.modalities = tuple(modalities)
        self.dim = self.view.token_width
        if self.view.family == "timm_vit":
            self.head = vit.head
            vit.head = nn.Identity()
        else:
            self.head = nn.Linear(self.view.width, num_classes)
        self.vit = vit
        self.modality_embed = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)
        self.missing_tokens = None
        if missing_token:
            self.missing_tokens = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)

    def backbone_views(self) -> dict[str, Backbone]:
        """The one backbone of the stream, by its qualified name."""
        return {"vit": self.view}

    def modality_tokens(
        self, pixels: torch.Tensor, present: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix tokens ``[B, P, dim]`` and patch tokens ``[B, K*N, dim]`` of one modality."""
        batch = pixels.shape[0]
        flat = pixels.flatten(0, pixels.dim() - 4)
        num_prefix = self.view.num_prefix_tokens
        missing = None
        if self.missing_tokens is not None:
            keep = present.repeat_interleave(flat.shape[0] // batch)[:, None, None]
            token = self.missing_tokens[index]
            missing = lambda x: torch.where(keep, x, token.to(x.dtype))  # noqa: E731
        embedding = self.modality_embed[index]
        onto_patches = lambda x: torch.cat([x[:, :num_prefix], x[:, num_prefix:] + embedding.to(x.dtype)], 1)  # noqa: E731
        x = self.view.embed(flat, missing, onto_patches)
        prefix = x[:, :num_prefix].unflatten(0, (batch, -1))[:, 0]
        return prefix, x[:, num_prefix:].reshape(batch, -1, self.dim)

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
        return torch.cat([parts[0][0], *(patches for _, patches in parts)], 1)

    def features(self, batch: Mapping) -> torch.Tensor:
        """Pooled features ``[B, dim]`` of the stream after all blocks."""
        with routed(self, batch):
            x = self.embed(batch)
            for index in range(len(self.view.block_names())):
                x = self.view.run_block(index, x)
        return self.view.pool(x)

    def forward(self, batch: Mapping) -> torch.Tensor:
        return self.head(self.features(batch))
