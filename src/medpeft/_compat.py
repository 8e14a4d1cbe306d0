"""Import shim for a CUDA-built torchvision wheel beside a CPU-only torch.

PyPI's torchvision wheel registers fake kernels for ``torchvision::nms`` at
import time; on a CPU build of torch the operator schema was never defined and
``import torchvision`` (and so timm, transformers, peft) fails with
"operator torchvision::nms does not exist". We define the missing schemas and
import again. Compiled ops (nms, image decoding) stay unavailable, which is
fine: medpeft loads images with PIL. On a normal install this does nothing.
"""

from __future__ import annotations

import contextlib
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive for the process


def ensure_torchvision_importable() -> None:
    """Import torchvision, defining missing operator schemas if needed."""
    global _library
    try:
        import torchvision
        return
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    import torchvision  # noqa: F401


with contextlib.suppress(ImportError):  # torchvision absent: timm will report it itself
    ensure_torchvision_importable()
