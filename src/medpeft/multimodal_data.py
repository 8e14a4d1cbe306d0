"""The data side of a multimodal run: samples, missing tables, transforms and loaders.

`load_source` reads what ``data`` describes (a manifest, a recipe's native
layout, or the synthetic task written as PNGs + a manifest) into a
:class:`~medpeft.data.multimodal.MultiModalSource` with every sample in a split.
`RunData` turns a split and a missing table into a loader of the multimodal batch
dict. Images are resized whole to a square (no crop: a centre crop would cut off
one eye of ODIR's side-by-side pair); ViLT normalises with mean = std = 0.5
(``ViltImageProcessor``), a timm ViT with its own pretraining values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader

from medpeft.adapters.config import Preprocessing
from medpeft.adapters.io import default_preprocessing
from medpeft.data.datasets import build_loader
from medpeft.data.manifest import SPLITS, holdout_fractions
from medpeft.data.missing import (
    MissingTable,
    make_missing_table,
    make_split_tables,
    split_seed,
    split_settings,
)
from medpeft.data.multimodal import MultiModalCollate, MultiModalDataset, MultiModalSource
from medpeft.data.multimodal_manifest import read_multimodal_manifest, seeded_split
from medpeft.data.synthetic_multimodal import make_synthetic_multimodal
from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError
from medpeft.multimodal_config import (
    SYNTHETIC_MODALITIES,
    MissingSettings,
    MultiModalDataSettings,
    MultiModalRunConfig,
)
from medpeft.runner import dataset_root

SYNTHETIC_DIR = "synthetic_data"
VILT_MEAN_STD = (0.5, 0.5, 0.5)
VILT_INTERPOLATION = "bicubic"


def load_source(config: MultiModalRunConfig, workdir: str | Path) -> MultiModalSource:
    """The samples of ``config.data``, each assigned to train, val or test.

    Args:
        config: The run config (``data``; ``model.img_size`` and ``train.seed`` for
            the synthetic task and seeded splits).
        workdir: Folder the synthetic task is written to.
    """
    data, seed = config.data, config.train.seed
    if data.source == "odir":
        from medpeft.data.recipes.odir import load_odir  # openpyxl

        source = load_odir(dataset_root(data), seed=seed)
    elif data.source == "iu_xray":
        from medpeft.data.recipes.iu_xray import load_iu_xray

        source = load_iu_xray(dataset_root(data), labels=data.classes, seed=seed)
    elif data.source == "synthetic":
        source = _synthetic(data, config.model.img_size, seed, Path(workdir) / SYNTHETIC_DIR)
    else:
        source = _manifest(data)
    _fill_splits(source, data, seed)
    return source


def _manifest(data: MultiModalDataSettings) -> MultiModalSource:
    if data.manifest is None or not data.modalities:
        raise ConfigError(
            "data.manifest, data.modalities: source 'csv' needs the manifest path and "
            "a modality -> kind mapping, e.g. {image: image, text: text}"
        )
    return read_multimodal_manifest(
        data.manifest, data.modalities, data.label_cols, data.task, data.classes,
        data.root, data.id_col, data.split_col, data.combine,
    )


def _synthetic(
    data: MultiModalDataSettings, img_size: int, seed: int, folder: Path
) -> MultiModalSource:
    """Generate the synthetic task, write it as PNGs + manifest and read that back."""
    kinds = data.modalities or SYNTHETIC_MODALITIES
    synthetic = make_synthetic_multimodal(
        data.num_samples, tuple(kinds), kinds, data.bits_per_modality, data.task, img_size,
        seed=seed,
    )
    manifest = synthetic.write(folder)
    labels = synthetic.label_names
    return read_multimodal_manifest(manifest, kinds, synthetic.label_columns, data.task, labels)


def _fill_splits(source: MultiModalSource, data: MultiModalDataSettings, seed: int) -> None:
    """Give samples without a split one, seeded, by ``val_fraction``/``test_fraction``."""
    unsplit = [r for r in source.records if r.split is None]
    if unsplit:
        weights = holdout_fractions(data.val_fraction, data.test_fraction)
        for record, split in zip(unsplit, seeded_split(len(unsplit), weights, seed)):
            record.split = split
    empty = [s for s in ("train", "val") if not source.ids(s)]
    if empty:
        raise ConfigError(f"data: the {empty} split(s) are empty; check the split column/fractions")


def split_tables(source: MultiModalSource, missing: MissingSettings) -> dict[str, MissingTable]:
    """The seeded missing table of every non-empty split (train/val: ``missing.train``)."""
    missing.check(source.modalities)
    ids = {split: source.ids(split) for split in SPLITS if source.ids(split)}
    settings = split_settings(missing.train, missing.test)
    return make_split_tables(ids, source.modalities, settings, missing.seed)


def grid_tables(
    source: MultiModalSource, missing: MissingSettings, split: str = "test"
) -> dict[tuple[str, float], MissingTable]:
    """One table per grid setting ``(kind, eta)``, drawn with ``split``'s seed (so they nest)."""
    ids, seed = source.ids(split), split_seed(missing.seed, split)
    return {
        (kind, float(eta)): make_missing_table(ids, source.modalities, eta, kind, seed)
        for kind in missing.grid_kinds(source.modalities)
        for eta in missing.grid.etas
    }


def preprocessing(config: MultiModalRunConfig, model: nn.Module) -> Preprocessing:
    """Input size, normalisation and resize filter of the run's backbone."""
    size = config.model.img_size
    if config.model.kind == "vilt":
        return Preprocessing(size, VILT_MEAN_STD, VILT_MEAN_STD, VILT_INTERPOLATION)
    return default_preprocessing(model.vit, size)


def image_transforms(
    source: MultiModalSource, pre: Preprocessing, data: MultiModalDataSettings, train: bool
) -> dict:
    """Per image modality: whole-image resize + normalise, augmented if ``train``.

    Side-by-side (``hconcat``) modalities are never flipped: a flip swaps the images.
    """
    return {
        m: build_transform(
            pre.size, pre.mean, pre.std, train=train and data.augment,
            interpolation=pre.interpolation, keep_aspect=False,
            hflip=0.0 if source.combine.get(m) == "hconcat" else data.hflip,
        )
        for m, kind in source.kinds.items()
        if kind == "image"
    }


@dataclass
class RunData:
    """Samples, preprocessing and batching of one run.

    Attributes:
        source: The samples.
        pre: Image preprocessing.
        collate: Batches items (tokenising the text modality).
        settings: The config's ``data`` section.
        seed: Seed of the shuffling.
    """

    source: MultiModalSource
    pre: Preprocessing
    collate: MultiModalCollate
    settings: MultiModalDataSettings
    seed: int

    def dataset(self, split: str, table: MissingTable | None, train: bool) -> MultiModalDataset:
        """Samples of ``split`` with the missing table applied."""
        source = self.source
        return MultiModalDataset(
            source.split(split), source.modalities, source.kinds,
            image_transforms(source, self.pre, self.settings, train), table,
            self.settings.missing_image, source.combine,
        )

    def loader(self, split: str, table: MissingTable | None, train: bool = False) -> DataLoader:
        """Shuffled training (``train``) or in-order evaluation loader of ``split``."""
        return build_loader(
            self.dataset(split, table, train), self.settings.batch_size, train,
            self.settings.num_workers, seed=self.seed, collate_fn=self.collate,
        )


def run_data(
    config: MultiModalRunConfig, source: MultiModalSource, model: nn.Module
) -> RunData:
    """`RunData` of a run: the backbone's preprocessing, a tokenizer if there is text."""
    tokenizer = None
    if "text" in source.kinds.values():
        from medpeft.backbones.vilt import build_tokenizer  # transformers

        tokenizer = build_tokenizer(config.model.tokenizer)
    collate = MultiModalCollate(tokenizer, config.model.max_text_len)
    return RunData(source, preprocessing(config, model), collate, config.data, config.train.seed)


def text_modality(kinds: Mapping[str, str], default: str = "text") -> str:
    """Name of the text modality (``default`` if there is none)."""
    return next((m for m, kind in kinds.items() if kind == "text"), default)


def overall(metrics: Mapping[str, float]) -> dict[str, float]:
    """Summary metrics only (no per-class ``metric/class`` keys)."""
    return {k: v for k, v in metrics.items() if "/" not in k}
