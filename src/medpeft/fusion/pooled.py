"""One image modality through any backbone's pooled features and a new head.

The fusion of backbones that are not timm ViTs (transformers, open_clip, timm Swin
and ConvNeXt): the native module sits under ``backbone`` unchanged (its own
parameter names, below ``backbone.``), its family view
(:func:`medpeft.backbones.base.describe`) gives the pooled features the library
itself computes, and ``head`` is a new ``Linear(width -> classes)``. Like
:class:`~medpeft.fusion.single.SingleStream` it takes the batch dict or a plain
image tensor, and ``K`` images per sample (``[B, K, 3, H, W]``) are classified one by
one with their logits max-pooled over ``K``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medpeft.backbones.base import Backbone, describe
from medpeft.fusion.base import modality_images, routed


class PooledClassifier(nn.Module):
    """``head(backbone.features(images))`` for one image modality.

    Args:
        backbone: A native model of a registered backbone family.
        num_classes: Outputs of the new head.
        modality: The batch dict's image modality.
    """

    trained_prefixes = ("head.",)

    def __init__(self, backbone: nn.Module, num_classes: int, modality: str = "image") -> None:
        super().__init__()
        self.backbone = backbone
        self.view = describe(backbone)
        self.head = nn.Linear(self.view.width, num_classes)
        self.modalities = (modality,)

    def backbone_views(self) -> dict[str, Backbone]:
        """The backbone views inside this model, by the qualified name of their module."""
        return {"backbone": self.view}

    def features(self, batch: Mapping | torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, width]`` (``[B, K, width]`` for ``K`` images per sample)."""
        images = modality_images(self, batch)
        with routed(self, batch if isinstance(batch, Mapping) else {}):
            if images.dim() == 4:
                return self.view.features(images)
            return self.view.features(images.flatten(0, 1)).unflatten(0, images.shape[:2])

    def forward(self, batch: Mapping | torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(batch))
        return logits if logits.dim() == 2 else logits.amax(1)
