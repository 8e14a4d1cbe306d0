"""Readers for public datasets in their native layouts.

`RECIPES` maps a recipe name to ``reader(root, ...) -> Manifest`` for the
single-modality datasets of MeLo. Multimodal recipes (``odir``, ``iu_xray``)
live in their own modules and return a ``MultiModalSource``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medpeft.data.manifest import Manifest
from medpeft.data.recipes.melo import (
    load_blood_cells,
    load_chestxray14,
    load_inbreast,
    load_shenzhen,
)
from medpeft.errors import ConfigError

RECIPES: dict[str, Callable[..., Manifest]] = {
    "shenzhen": load_shenzhen,
    "blood_cells": load_blood_cells,
    "chestxray14": load_chestxray14,
    "inbreast": load_inbreast,
}


def load_recipe(name: str, root: str | Path, **kwargs) -> Manifest:
    """Read dataset ``name`` from ``root`` (ConfigError for an unknown name)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown dataset recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name](root, **kwargs)


__all__ = ["RECIPES", "load_recipe"]
