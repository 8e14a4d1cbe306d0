"""medpeft: adapt vision foundation models to medical diagnosis with few trainable parameters.

The public API (imported on first use, so ``import medpeft`` stays light)::

    model = medpeft.adapt("vit_base_patch16_224", medpeft.LoraSettings(rank=4), num_classes=2)
    model.save_adapter("adapters/tb", labels=["normal", "tb"])
    model = medpeft.load_adapter("adapters/tb")
"""

from __future__ import annotations

import importlib
from typing import Any

from medpeft import _compat  # noqa: F401  (must run before timm/torchvision imports)
from medpeft.errors import ConfigError, DataError, MedpeftError, WeightsError

__version__ = "0.1.0"

_LAZY = {
    "adapt": "medpeft.api",
    "load_adapter": "medpeft.api",
    "AdaptedModel": "medpeft.api",
    "route": "medpeft.routing",
    "AdapterBank": "medpeft.bank",
    "describe_backbone": "medpeft.backbones.base",
    "backbone_presets": "medpeft.backbones.presets",
    **dict.fromkeys(
        ("LoraSettings", "MoraSettings", "MorSettings", "PromptSettings", "DoraSettings"), "medpeft.methods"
    ),
}
_RENAMED = {"describe_backbone": "describe"}

__all__ = ["ConfigError", "DataError", "MedpeftError", "WeightsError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'medpeft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value
