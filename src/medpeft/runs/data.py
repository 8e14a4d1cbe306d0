"""The data side of a run: config -> source, missing tables, preprocessing and loaders.

`load_source` reads what ``data`` describes into a `Source` with every sample in a
split (stratified where the data has none, groups kept whole), with no image in
two splits (``data.leakage``). `run_positive_class` is the class a two-class
task's sensitivity and ROC are about. `RunData` turns a split (and, for
several modalities, a missing table) into a loader of the batch dict. One
modality: no missing tables, no grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn
from torch.utils.data import DataLoader

from medpeft.adapters_io.config import Preprocessing
from medpeft.adapters_io.folder import default_preprocessing
from medpeft.adapters_io.legacy import VILT_MEAN_STD
from medpeft.config import DataSettings, MissingSettings, RunConfig
from medpeft.data.cache import ImageCache, default_cache_dir, eval_resize_side
from medpeft.data.collate import Collate
from medpeft.data.dataset import Dataset
from medpeft.data.labels import positive_class
from medpeft.data.leakage import check_leakage
from medpeft.data.loader import SkippedSamples, SkippingLoader, build_loader
from medpeft.data.missing import (
    MissingTable,
    make_missing_table,
    make_split_tables,
    split_seed,
    split_settings,
)
from medpeft.data.records import Source
from medpeft.data.sources import RECIPES, csv_source, folder_source, recipe_source, synthetic_source
from medpeft.data.splits import SPLITS, assign_splits
from medpeft.data.transforms import NORMALIZATIONS, image_transforms
from medpeft.errors import ConfigError, did_you_mean
from medpeft.run_layout import RunLayout

SOURCES = ("csv", "folder", "synthetic", *RECIPES)
SYNTHETIC_MODALITIES = {"a": "image", "b": "image"}
RARE = 2  # a class with at most this many samples (or 0.1% of the data) is flagged
Tables = dict[str, MissingTable | None]


def load_source(config: RunConfig, layout: RunLayout) -> Source:
    """The samples of ``config.data``, each in train, val or test.

    Args:
        config: The run config (``data``; ``model.img_size`` and ``train.seed`` for the
            synthetic task and seeded splits).
        layout: The run folder (the synthetic task is written into it).
    """
    data, seed = config.data, config.train.seed
    if data.group_col is not None and data.source != "csv":
        raise ConfigError(
            f"data.group_col: {data.group_col!r} names a manifest column; source {data.source!r} has "
            "none (source csv reads one)"
        )
    if data.source == "csv":
        if data.manifest is None:
            raise ConfigError("data.manifest: source 'csv' needs the path of a CSV manifest")
        source = csv_source(
            data.manifest, modalities=data.modalities, image_col=data.image_col,
            label_col=data.label_col, label_cols=data.label_cols, label_sep=data.label_sep,
            split_col=data.split_col, id_col=data.id_col, task=data.task, classes=data.classes,
            root=data.root, combine=data.combine, group_col=data.group_col,
        )
    elif data.source == "folder":
        source = folder_source(dataset_root(data), data.classes)
    elif data.source == "synthetic":
        source = synthetic_source(
            layout.synthetic_data, data.modalities or SYNTHETIC_MODALITIES, data.num_samples,
            data.bits_per_modality, data.task or "multiclass", config.model.img_size or 32, seed,
        )
    elif data.source in RECIPES:
        options = {"labels": data.classes} if data.source == "iu_xray" else {}
        source = recipe_source(data.source, dataset_root(data), seed=seed, **options)
    else:
        hint = did_you_mean(data.source, SOURCES)
        raise ConfigError(f"data.source: {data.source!r} is not one of {list(SOURCES)}{hint}")
    source = assign_splits(source, data.val_fraction, data.test_fraction, seed, data_layout(data))
    check_leakage(source.records, source.kinds, data.leakage)
    return source


def data_layout(data: DataSettings) -> str:
    """How the data of ``data`` are laid out, for messages about their splits."""
    if data.source == "csv":
        return f"manifest {data.manifest} (split column {data.split_col!r})"
    if data.source == "folder":
        return f"folder {data.root} (<split>/<class>/ folders)"
    return f"data.source {data.source!r}"


def run_positive_class(config: RunConfig, source: Source) -> str | None:
    """The positive class of a two-class task (``data.positive_class`` or the default rule)."""
    return positive_class(source.labels, source.task, config.data.positive_class)


def positive_index(source: Source, positive: str | None) -> int:
    """Column of ``positive`` among the labels (1 when there is none: not a two-class task)."""
    return source.labels.index(positive) if positive is not None else 1


def describe_source(source: Source, positive: str | None = None) -> list[str]:
    """Lines saying what a run reads: samples per split, and every class with its count.

    A class with very few samples (at most `RARE`, or 0.1% of the data) is flagged:
    with ``data.classes`` unset, a misspelt label silently becomes a class of its own.
    A two-class task names its ``positive`` class.
    """
    splits = ", ".join(f"{s} {len(source.split(s))}" for s in SPLITS if source.split(s))
    lines = [f"data: {len(source.records)} samples ({splits}); modalities {dict(source.kinds)}"]
    counts = class_counts(source)
    lines.append(f"{source.task} labels: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if positive is not None:
        lines.append(
            f"positive class: {positive} (sensitivity, specificity, PPV and AUROC are about it; "
            "data.positive_class changes it)"
        )
    limit = max(RARE, len(source.records) / 1000)
    for label in (k for k, n in counts.items() if n <= limit):
        lines.append(
            f"warning: label {label!r} has only {counts[label]} sample(s); a typo in the labels? "
            "(data.classes fixes the list)"
        )
    return lines


def class_counts(source: Source) -> dict[str, int]:
    """Samples per class (multiclass) or positives per label (multilabel)."""
    counts = dict.fromkeys(source.labels, 0)
    for record in source.records:
        if isinstance(record.target, int):
            counts[source.labels[record.target]] += 1
        else:
            for label, value in zip(source.labels, record.target):
                counts[label] += int(value > 0)
    return counts


def dataset_root(data: DataSettings) -> str:
    """``data.root``, or a ConfigError saying the source needs its dataset folder."""
    if data.root is None:
        raise ConfigError(f"data.root: source {data.source!r} needs the dataset folder")
    return data.root


def split_tables(source: Source, missing: MissingSettings) -> Tables:
    """The seeded missing table of every non-empty split; None for one modality."""
    ids = {split: source.ids(split) for split in SPLITS if source.ids(split)}
    if len(source.modalities) == 1:
        return dict.fromkeys(ids)
    missing.check(source.modalities)
    settings = split_settings(missing.train, missing.test, missing.test_applies_to_val)
    return make_split_tables(ids, source.modalities, settings, missing.seed)


def saved_or_new_tables(source: Source, missing: MissingSettings, layout: RunLayout) -> Tables:
    """The run's saved tables where they still fit the config (setting, seed, ids), else new ones.

    ``medpeft eval`` thereby reproduces the exact assignment a run was tested with,
    also when the protocol's drawing changed since, and follows overrides such as
    ``missing.test.eta=0.3``.
    """
    tables = split_tables(source, missing)
    for split, table in tables.items():
        path = layout.missing_table(split)
        if table is not None and path.is_file():
            saved = MissingTable.load(path)
            same = (saved.setting, saved.seed, saved.ids, saved.modalities)
            if same == (table.setting, table.seed, table.ids, table.modalities):
                tables[split] = saved
    return tables


def grid_tables(
    source: Source, missing: MissingSettings, split: str = "test"
) -> dict[tuple[str, float], MissingTable]:
    """One table per grid setting ``(kind, eta)`` (none for one modality), nested by seed."""
    if len(source.modalities) == 1:
        return {}
    ids, seed = source.ids(split), split_seed(missing.seed, split)
    return {
        (kind, float(eta)): make_missing_table(ids, source.modalities, eta, kind, seed)
        for kind in missing.grid_kinds(source.modalities)
        for eta in missing.grid.etas
    }


def save_tables(tables: Tables, layout: RunLayout) -> None:
    """Write the missing table of each split into the run folder (several modalities)."""
    for split, table in tables.items():
        if table is not None:
            table.save(layout.missing_table(split))


def preprocessing(config: RunConfig, model: nn.Module) -> Preprocessing:
    """Input size, normalisation, resize filter and resize mode of the run's backbone."""
    size, resize = config.model.img_size, config.data.resize
    if config.model.kind == "vilt":
        return Preprocessing(size or 384, VILT_MEAN_STD, VILT_MEAN_STD, "bicubic", resize=resize)
    pre = default_preprocessing(model, size)
    pre.resize = resize
    if config.data.normalize != "backbone":
        pre.mean, pre.std = NORMALIZATIONS[config.data.normalize]
    return pre


def make_collate(kinds: Mapping[str, str], tokenizer: str, max_text_len: int) -> Collate:
    """The batch collate; it tokenises text when a modality is text."""
    if "text" not in kinds.values():
        return Collate()
    from medpeft.backbones.vilt import build_tokenizer  # transformers

    return Collate(build_tokenizer(tokenizer), max_text_len)


@dataclass
class RunData:
    """Samples, preprocessing and batching of one run.

    Attributes:
        source: The samples.
        pre: Image preprocessing.
        collate: Batches items (tokenising the text modality).
        settings: The config's ``data`` section.
        seed: Seed of the shuffling.
        on_bad_sample: ``stop`` or ``skip`` an unreadable sample (``train.on_bad_sample``).
        skipped: The samples skipped so far, by every loader of the run.
    """

    source: Source
    pre: Preprocessing
    collate: Collate
    settings: DataSettings
    seed: int
    on_bad_sample: str = "stop"
    skipped: SkippedSamples = field(default_factory=SkippedSamples)

    def dataset(self, split: str, table: MissingTable | None, train: bool) -> Dataset:
        """Samples of ``split`` with the missing table applied."""
        s = self.settings
        source = self.source
        transforms = image_transforms(
            source.kinds, source.combine, self.pre, train and s.augment, s.hflip, s.augmentation
        )
        dataset = Dataset.from_source(
            source, split, transforms, table, s.missing_image, train=train,
            read_options=s.read_options(), on_bad_sample=self.on_bad_sample,
        )
        if s.cache:  # decoded images shrunk to the evaluation resize, kept on disk
            side = eval_resize_side(self.pre.size, self.pre.crop)
            dataset.read_image = ImageCache(s.cache_dir or default_cache_dir(), side, self.pre.interpolation)
        return dataset

    def loader(
        self, split: str, table: MissingTable | None, train: bool = False
    ) -> DataLoader | SkippingLoader:
        """Shuffled (class-balanced if asked) training loader, or in-order evaluation loader.

        With ``on_bad_sample="skip"`` it is a `SkippingLoader` recording into ``skipped``.
        """
        s = self.settings
        loader = build_loader(
            self.dataset(split, table, train), s.batch_size, train, s.num_workers,
            s.balanced if train else False, self.seed, self.collate,
        )
        return SkippingLoader(loader, self.skipped) if self.on_bad_sample == "skip" else loader


def run_data(config: RunConfig, source: Source, model: nn.Module) -> RunData:
    """`RunData` of a run: the backbone's preprocessing, a tokenizer if there is text."""
    collate = make_collate(source.kinds, config.model.tokenizer, config.model.max_text_len)
    return RunData(
        source, preprocessing(config, model), collate, config.data, config.train.seed,
        config.train.on_bad_sample,
    )
