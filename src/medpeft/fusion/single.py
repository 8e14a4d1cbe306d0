"""Single-stream fusion: one image modality on the plain timm ViT, parameter names unchanged.

:func:`as_single_stream` gives a timm model a subclass of its own class whose
``forward`` also takes the batch dict (``{"images": {modality: Tensor[B, 3, H, W]},
"present": ..., "adapters": ...}``) and enters the call's routing. Nothing is
wrapped: ``blocks.0.attn.qkv``, ``head`` and every timm method stay where they
are, so LoRA-ViT files import and PEFT exports load onto a plain timm model.
A plain image tensor is accepted too. ``K`` images per sample (``[B, K, 3, H, W]``,
e.g. MRI slices) are classified one by one and their logits max-pooled over ``K``, as
the EI code's single-modality stage does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medpeft.backbones.base import Backbone, describe
from medpeft.fusion.base import modality_images, routed
from medpeft.methods.layers import check_routed
from medpeft.routing import route


class SingleStream:
    """Mixin placed in front of a timm model's class by :func:`as_single_stream`."""

    modalities: tuple[str, ...]
    trained_prefixes = ("head.",)

    def forward(self, batch: Mapping | torch.Tensor) -> torch.Tensor:
        if not isinstance(batch, Mapping):
            with route(adapters=check_routed(self)):
                return super().forward(batch)
        images = modality_images(self, batch)
        with routed(self, batch):
            if images.dim() == 4:
                return super().forward(images)
            logits = super().forward(images.flatten(0, 1))  # K images per sample (MRI slices)
            return logits.unflatten(0, images.shape[:2]).amax(1)

    def backbone_views(self) -> dict[str, Backbone]:
        """The backbone view of this model itself (qualified name ``""``)."""
        return {"": describe(self)}

    def features(self, batch: Mapping | torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, width]`` (``[B, K, width]`` for ``K`` images): timm's pre-logits."""
        images = modality_images(self, batch)
        with routed(self, batch if isinstance(batch, Mapping) else {}):
            flat = self.forward_features(images.flatten(0, images.dim() - 4))
            features = self.forward_head(flat, pre_logits=True)
        return features if images.dim() == 4 else features.unflatten(0, images.shape[:2])


_CLASSES: dict[type, type] = {}


def as_single_stream(vit: nn.Module, modality: str = "image") -> nn.Module:
    """Make ``vit`` (in place) read modality ``modality`` of the batch dict; return it."""
    base = type(vit)
    if not issubclass(base, SingleStream):
        if base not in _CLASSES:
            _CLASSES[base] = type(f"SingleStream{base.__name__}", (SingleStream, base), {})
        vit.__class__ = _CLASSES[base]
    vit.modalities = (modality,)
    return vit
