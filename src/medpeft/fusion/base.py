"""What every fusion model does around its forward: read its images, check the mask, enter the routing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from medpeft.errors import DataError
from medpeft.methods.layers import check_routed
from medpeft.routing import route


def modality_images(model: nn.Module, batch: Mapping | torch.Tensor) -> torch.Tensor:
    """The images ``[B, 3, H, W]`` or ``[B, K, 3, H, W]`` of ``model``'s one modality.

    ``batch`` is the batch dict or a plain image tensor. Raises DataError if the
    modality is absent or the tensor has another shape.
    """
    modality = model.modalities[0]
    images = batch.get("images", {}).get(modality) if isinstance(batch, Mapping) else batch
    if images is None:
        raise DataError(f"batch has no images for modality {modality!r}")
    if images.dim() not in (4, 5):
        raise DataError(
            f"modality {modality!r}: expected [B, 3, H, W] or [B, K, 3, H, W] images, got "
            f"{tuple(images.shape)}"
        )
    return images


@contextmanager
def routed(model: nn.Module, batch: Mapping) -> Iterator[torch.Tensor | None]:
    """Route the calls inside by the batch's ``present`` mask and per-sample ``adapters``.

    Yields the presence mask (optional for one modality). Raises DataError if it is
    missing or has the wrong number of columns, ConfigError if the call routes to
    adapters ``model`` does not hold. A call that routes none is served by the model's
    first adapter.
    """
    present = batch.get("present")
    if present is None and len(model.modalities) > 1:
        raise DataError(f"batch has no 'present' mask for the modalities {model.modalities}")
    if present is not None and present.shape[-1] != len(model.modalities):
        raise DataError(f"present has {present.shape[-1]} columns for modalities {model.modalities}")
    with route(presence=present, adapters=batch.get("adapters")), route(adapters=check_routed(model)):
        yield present
