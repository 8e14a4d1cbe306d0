"""Public datasets in their native layouts, by name: `RECIPES` and `recipe_source`.

Readers live in `medpeft.data.recipes` and are imported on first use (ODIR's
needs openpyxl). Each returns a `Source` with every record in a split.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from medpeft.data.records import Source
from medpeft.errors import ConfigError

RECIPES = {  # name -> "module:reader" under medpeft.data.recipes
    "shenzhen": "melo:load_shenzhen",
    "blood_cells": "melo:load_blood_cells",
    "chestxray14": "melo:load_chestxray14",
    "inbreast": "melo:load_inbreast",
    "odir": "odir:load_odir",
    "iu_xray": "iu_xray:load_iu_xray",
    "mmc_amd": "mmc_amd:load_mmc_amd",
    "derm7pt": "derm7pt:load_derm7pt",
    "mrnet": "mrnet:load_mrnet",
}


def recipe_source(name: str, root: str | Path, **kwargs) -> Source:
    """Read public dataset ``name`` from its folder ``root``.

    Args:
        name: a key of `RECIPES`.
        root: the dataset folder.
        **kwargs: the reader's options (e.g. ``seed``, ``val_fraction``, ``labels``).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown dataset recipe {name!r}; known: {sorted(RECIPES)}")
    module, reader = RECIPES[name].split(":")
    return getattr(importlib.import_module(f"medpeft.data.recipes.{module}"), reader)(root, **kwargs)
