"""Data: one path for any number of modalities.

Readers (`csv_source`, `folder_source`, `recipe_source`, `synthetic_source`)
yield a `Source` of `Record` s; `assign_splits` splits the unsplit ones;
`Dataset` + `Collate` + `build_loader` feed a model, with the missing-modality
protocol of `medpeft.data.missing` (a no-op for one modality).
"""

from medpeft.data.collate import Collate
from medpeft.data.dataset import Dataset
from medpeft.data.imageio import ReadOptions, load_image
from medpeft.data.loader import balanced_weights, build_loader
from medpeft.data.missing import (
    MissingSetting,
    MissingTable,
    make_missing_table,
    make_split_tables,
    split_settings,
)
from medpeft.data.records import Record, Source, Target
from medpeft.data.sources import (
    RECIPES,
    csv_source,
    folder_source,
    read_inputs,
    recipe_source,
    synthetic_source,
)
from medpeft.data.splits import (
    SPLITS,
    assign_splits,
    holdout_fractions,
    seeded_split,
    stratified_split,
)
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.data.synthetic_multimodal import make_synthetic_multimodal
from medpeft.data.transforms import build_transform

__all__ = [
    "RECIPES",
    "SPLITS",
    "Collate",
    "Dataset",
    "MissingSetting",
    "MissingTable",
    "ReadOptions",
    "Record",
    "Source",
    "Target",
    "assign_splits",
    "balanced_weights",
    "build_loader",
    "build_transform",
    "csv_source",
    "folder_source",
    "holdout_fractions",
    "load_image",
    "make_missing_table",
    "make_split_tables",
    "make_synthetic_dataset",
    "make_synthetic_multimodal",
    "read_inputs",
    "recipe_source",
    "seeded_split",
    "split_settings",
    "stratified_split",
    "synthetic_source",
]
