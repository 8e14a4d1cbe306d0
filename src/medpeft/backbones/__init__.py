"""Backbones: timm ViTs (and ViLT for image + text)."""

from medpeft.backbones.timm_vit import build_vit, data_config, load_backbone_weights
from medpeft.backbones.weights import read_state_dict

__all__ = ["build_vit", "data_config", "load_backbone_weights", "read_state_dict"]
