"""What every fusion model does around its forward: check the mask, enter the batch's routing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from medpeft.errors import DataError
from medpeft.methods.layers import check_routed
from medpeft.routing import route


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
