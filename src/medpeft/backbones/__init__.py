"""Backbones: timm models (and ViLT for image + text), encoders only, and their weights.

Importing this package registers the backbone families (``timm_vit``,
``timm_hier``, ``transformers``, ``open_clip``); the last two import their library
only when asked about one of its modules. ViLT lives in :mod:`medpeft.backbones.vilt` (``build_vilt``,
``build_tokenizer``), not re-exported here so that timm-only installs do not need
transformers.
"""

from medpeft.backbones import hf, open_clip, timm_hier  # noqa: F401  (register the families; hf and open_clip import no library)
from medpeft.backbones.timm_build import build_vit, load_backbone_weights
from medpeft.backbones.timm_vit import data_config
from medpeft.backbones.weights import read_state_dict

__all__ = ["build_vit", "data_config", "load_backbone_weights", "read_state_dict"]
