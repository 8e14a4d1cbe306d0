"""Backbones: timm ViTs (and ViLT for image + text), encoders only, and their weights.

ViLT lives in :mod:`medpeft.backbones.vilt` (``build_vilt``, ``build_tokenizer``),
not re-exported here so that timm-only installs do not need transformers.
"""

from medpeft.backbones import hf, open_clip  # noqa: F401  (register the families; no library import)
from medpeft.backbones.timm_vit import build_vit, data_config, load_backbone_weights
from medpeft.backbones.weights import read_state_dict

__all__ = ["build_vit", "data_config", "load_backbone_weights", "read_state_dict"]
