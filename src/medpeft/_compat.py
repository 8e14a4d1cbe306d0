"""Import shim for a CUDA-built torchvision wheel beside a CPU-only torch.

PyPI's torchvision wheel registers fake kernels for ``torchvision::nms`` at
import time; on a CPU build of torch the operator schema was never defined and
``import torchvision`` (and so timm, transformers, peft) fails with
"operator torchvision::nms does not exist". ``import medpeft`` installs an import
hook: when torchvision is first imported (by anyone), a failure of that kind
defines the missing schemas and runs torchvision's import again. Nothing is
imported before that, so ``import medpeft`` (and ``medpeft --help``) stays light.
Compiled ops (nms, image decoding) stay unavailable, which is fine: medpeft loads
images with PIL. On a normal install the hook changes nothing.

It also drops three notes that optional libraries log when they load on a CPU, for anyone
who imports them (transformers imports torchao when it is installed): torchao's CUDA-only
extensions and Triton kernels that are absent, and torch's note on the enums torchao
registers. Records are filtered by logger and message; nothing else is silenced.
"""

from __future__ import annotations

import logging
import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY_NOTES = {  # logger -> a part of the message it logs on every CPU import
    "torchao": "Failed to load ",
    "torchao.kernel.intmm": "Detected no triton",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported",
}
_library = None  # keeps the torch.library.Library alive for the process


def _define_missing_schemas() -> None:
    """Define torchvision's operator schemas that a CPU-only torch lacks."""
    global _library
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)


class _ShimLoader(Loader):
    """torchvision's own loader, retried once with the missing schemas defined."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        except RuntimeError as error:
            if "torchvision::nms" not in str(error):
                raise
            for name in [m for m in sys.modules if m.startswith("torchvision.")]:
                del sys.modules[name]
            _define_missing_schemas()
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resources, source, ...: torchvision's loader
        return getattr(self.loader, name)


class _TorchvisionFinder(MetaPathFinder):
    """Finds torchvision like Python does, with its loader wrapped in `_ShimLoader`."""

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != "torchvision":
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ShimLoader(spec.loader)
        return spec


def install() -> None:
    """Apply the shim to the first import of torchvision (once per process)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())


class _DropNote(logging.Filter):
    """Drops a logger's records whose message (before formatting) contains ``part``."""

    def __init__(self, part: str) -> None:
        super().__init__()
        self.part = part

    def filter(self, record: logging.LogRecord) -> bool:
        return self.part not in str(record.msg)


def quiet_library_notes() -> None:
    """Filter the load-time notes of :data:`_LIBRARY_NOTES` (once per process)."""
    for name, part in _LIBRARY_NOTES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNote) for f in logger.filters):
            logger.addFilter(_DropNote(part))


install()
quiet_library_notes()
