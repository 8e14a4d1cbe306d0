"""Slices of image volumes: how deep a volume is, and which slices stand for it.

MRNet-style samples keep one volume file per view (``.npy``, slice axis first) and
feed a few evenly spaced slices of it to the model (the EI code: 4 per view). In
training the positions may jitter within their spacing, as the public EI code's
``uni_spaced_sampling(..., disturbance=True)`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medpeft.data.imageio import NUMPY_SLICE_AXIS
from medpeft.errors import DataError


def volume_depth(path: str | Path, axis: int | None = None) -> int:
    """Number of slices of a ``.npy`` volume along ``axis`` (default: the first, ``(S, H, W)``);
    1 for a 2-D, grey ``(H, W, 1|2)`` or colour ``(H, W, 3|4)`` image, as :mod:`imageio` reads them."""
    path = Path(path)
    if not path.name.lower().endswith(".npy"):
        raise DataError(f"{path}: slices are read from .npy volumes (S, H, W), got another file type")
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read volume {path}: {err}") from err
    is_volume = len(shape) == 3 and shape[2] not in (1, 2, 3, 4)
    return int(shape[NUMPY_SLICE_AXIS if axis is None else axis]) if is_volume else 1


def spaced_slices(depth: int, count: int, jitter: bool = False) -> list[int]:
    """``count`` slice indices spread evenly over ``[0, depth - 1]``.

    Index ``i`` is the centre of the ``i``-th of ``count`` equal spans,
    ``step / 2 + i * step`` with ``step = (depth - 1) / count``, rounded. With
    ``jitter`` each moves uniformly within its span (``torch`` RNG, so loader workers
    stay reproducible).
    """
    if depth < 1 or count < 1:
        raise DataError(f"need a volume with slices and count >= 1, got depth {depth}, count {count}")
    step = (depth - 1) / count
    centres = step / 2 + step * torch.arange(count, dtype=torch.float64)
    if jitter:
        centres = centres + (torch.rand(count, dtype=torch.float64) - 0.5) * step
    return [int(i) for i in centres.round().clamp(0, depth - 1).tolist()]
