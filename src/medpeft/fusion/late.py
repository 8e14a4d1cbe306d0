"""Late fusion: every image modality embedded by its own ViT, the features joined at the end.

The EI paper's "fusion after unimodal embedding" baseline: modality ``m``'s ViT gives
its [CLS] feature (averaged over ``m``'s images); the features of all modalities are
concatenated (zeros for a modality a sample lacks) and one ``Linear(M*dim -> C)``
classifies them. Trained like EI from stage 1's per-modality models.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medpeft.backbones.base import Backbone, describe
from medpeft.errors import ConfigError
from medpeft.fusion.base import routed
from medpeft.fusion.intervention import EarlyIntervention


class LateFusion(nn.Module):
    """One timm ViT per image modality, concatenated [CLS] features, one head.

    Args:
        encoders: modality -> timm VisionTransformer (its own head is not used).
        num_classes: outputs of the joint head.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], num_classes: int) -> None:
        super().__init__()
        self.modalities = tuple(encoders)
        if len(self.modalities) < 2:
            raise ConfigError(f"late fusion needs >= 2 modalities, got {list(encoders)}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.views = {m: describe(encoder) for m, encoder in encoders.items()}
        self.num_classes = num_classes
        dim = self.views[self.modalities[0]].width
        self.head = nn.Linear(len(self.modalities) * dim, num_classes)
        self.trained_prefixes = ("head.",)

    def backbone_views(self) -> dict[str, Backbone]:
        """Each modality's encoder, by its qualified name."""
        return {f"encoders.{m}": view for m, view in self.views.items()}

    def forward(self, batch: Mapping) -> torch.Tensor:
        with routed(self, batch) as present:
            features = []
            for i, m in enumerate(self.modalities):
                feature = EarlyIntervention.per_image(self.views[m], batch["images"][m]).mean(1)
                features.append(feature * present[:, i : i + 1].to(feature.dtype))
        return self.head(torch.cat(features, 1))
