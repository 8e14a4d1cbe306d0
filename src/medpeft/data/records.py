"""Samples of any number of modalities: `Record` (one sample) and `Source` (a dataset of them).

A record maps each modality to its raw value: a tuple of file paths for an
image modality (empty = genuinely missing; several = ``K`` images, e.g. MRI
slices or two eyes) or a string for a text modality (blank = missing). A
single-modality dataset is the one-modality case: modality ``"image"`` only.
Every reader in `medpeft.data.sources` yields a `Source`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from medpeft.errors import ConfigError, DataError
from medpeft.tasks import check_task

log = logging.getLogger(__name__)
MAX_LISTED = 5

MODALITY_KINDS = ("image", "text")
IMAGE_MODALITY = "image"  # the one modality of single-image data

Target = int | tuple[float, ...]  # class index (multiclass) or 0/1 per label (multilabel)
Value = tuple[str, ...] | str


def has_value(value: Value | None) -> bool:
    """Whether a modality value holds data (a non-blank text, at least one file)."""
    if isinstance(value, str):
        return bool(value.strip())
    return bool(value)


@dataclass
class Record:
    """One sample: raw modality values, target, optional split and its origin.

    Attributes:
        id: unique sample id (key of a missing-modality table).
        values: modality -> tuple of image paths, or raw text.
        target: class index (multiclass) or 0/1 tuple in label order (multilabel).
        split: ``train``/``val``/``test``, or None until `medpeft.data.splits.assign_splits`.
        where: origin for error messages, e.g. ``manifest.csv line 4``.
        group: the group that must stay in one split (e.g. the patient), or None.
    """

    id: str
    values: dict[str, Value]
    target: Target
    split: str | None = None
    where: str = ""
    group: str | None = None

    def available(self, modalities: Sequence[str]) -> tuple[bool, ...]:
        """Which modalities the data genuinely holds for this sample."""
        return tuple(has_value(self.values.get(m)) for m in modalities)


@dataclass
class Source:
    """Records plus what datasets and models need to know about them.

    Construction checks the records: unique ids, at least one modality value
    each, targets that fit ``task`` and ``labels`` (DataError naming the record).

    Attributes:
        records: the samples, in reading order (none dropped).
        modalities: modality order (column order of presence masks).
        kinds: modality -> ``"image"`` or ``"text"``.
        labels: class (multiclass) or label (multilabel) names in head order.
        task: ``"multiclass"`` or ``"multilabel"``.
        combine: image modality -> ``"stack"`` or ``"hconcat"`` (see `medpeft.data.dataset`).
    """

    records: list[Record]
    modalities: tuple[str, ...]
    kinds: dict[str, str]
    labels: list[str]
    task: str
    combine: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_task(self.task)
        check_modalities(self.modalities, self.kinds)
        if not self.records:
            raise DataError("the data source holds no samples")
        check_records(self.records, self.modalities)
        for record in self.records:
            check_target(record, len(self.labels), self.task)

    @property
    def num_classes(self) -> int:
        """Number of classes or labels (outputs of the head)."""
        return len(self.labels)

    def split(self, name: str | None) -> list[Record]:
        """Records of one split (None: those without a split)."""
        return [r for r in self.records if r.split == name]

    def ids(self, split: str) -> list[str]:
        """Sample ids of one split: the keys a missing table for it needs."""
        return [r.id for r in self.split(split)]

    def targets(self, split: str) -> list[Target]:
        """Targets of one split."""
        return [r.target for r in self.split(split)]


def image_source(records: list[Record], labels: Sequence[str], task: str) -> Source:
    """A single-image `Source`: records whose only modality is `IMAGE_MODALITY`."""
    kinds = {IMAGE_MODALITY: "image"}
    return Source(records, (IMAGE_MODALITY,), kinds, list(labels), task)


def check_modalities(modalities: Sequence[str], kinds: Mapping[str, str]) -> None:
    """Validate modality kinds: at least one modality, each image or text, at most one text."""
    if not modalities:
        raise ConfigError("at least one modality is needed")
    for m in modalities:
        if kinds.get(m) not in MODALITY_KINDS:
            raise ConfigError(
                f"modality {m!r} needs a kind in {MODALITY_KINDS}, got {kinds.get(m)!r}"
            )
    if sum(kinds[m] == "text" for m in modalities) > 1:
        raise ConfigError("at most one text modality is supported (one token stream)")


def input_key(record: Record) -> tuple:
    """What a record reads: each image file by its resolved real path (so ``imgs/x.png``,
    ``imgs/../imgs/x.png`` and the absolute path are one file), each text as is."""
    return tuple(sorted(
        (m, v if isinstance(v, str) else tuple(os.path.realpath(p) for p in v))
        for m, v in record.values.items()
    ))


def drop_duplicates(
    records: Sequence[Record], labels: Sequence[str] | None = None, drop: bool = True
) -> list[Record]:
    """The records without repeats of the same inputs (same files and text), with a warning.

    Files are compared by real path (see `input_key`). A repeated row would otherwise
    be trained on twice and could land in train and test at once. Repeats that disagree
    (another label, explicit split or group) are a DataError naming both rows, also with
    ``drop=False`` (rows that are samples of their own, e.g. under an id column: kept).
    """
    first: dict[tuple, Record] = {}
    kept, dropped = [], []
    for record in records:
        key = input_key(record)
        seen = first.setdefault(key, record)
        if seen is not record:
            _check_agree(seen, record, key, labels)
        if seen is record or not drop:
            kept.append(record)
        else:
            dropped.append(f"{record.where or record.id} (= {seen.where or seen.id})")
    if dropped:
        more = " ..." if len(dropped) > MAX_LISTED else ""
        log.warning(
            "warning: %d duplicated row(s) dropped, each sample kept once so it sits in one split: %s%s",
            len(dropped), ", ".join(dropped[:MAX_LISTED]), more,
        )
    return kept


def _check_agree(seen: Record, record: Record, key: tuple, labels: Sequence[str] | None) -> None:
    """DataError naming both rows if two records of the same inputs disagree."""
    facts = (
        ("label", _label_text(seen.target, labels), _label_text(record.target, labels)),
        ("split", seen.split, record.split),
        ("group", seen.group, record.group),
    )
    for what, a, b in facts:
        if a != b:
            files = [p for _, v in key if isinstance(v, tuple) for p in v]
            both = f" (both read {files[0]})" if files else ""
            raise DataError(
                f"{record.where or record.id}: the same inputs as {seen.where or seen.id} with "
                f"another {what} ({b!r} vs {a!r}){both}; keep one row per sample"
            )


def _label_text(target: Target, labels: Sequence[str] | None) -> Target | str:
    """A target as its class name(s) (``|``-joined for multilabel) when ``labels`` are known."""
    if labels is None:
        return target
    if isinstance(target, int):
        return labels[target]
    return "|".join(name for name, on in zip(labels, target) if on)


def check_records(records: Sequence[Record], modalities: Sequence[str]) -> None:
    """Raise DataError naming the first duplicated sample id or sample without any modality."""
    seen: dict[str, str] = {}
    for r in records:
        if r.id in seen:
            raise DataError(f"{r.where}: duplicate sample id {r.id!r} (first at {seen[r.id]})")
        seen[r.id] = r.where
        if not any(r.available(modalities)):
            raise DataError(f"{r.where or r.id}: sample {r.id!r} has no modality")


def check_target(record: Record, num_classes: int, task: str) -> None:
    """Raise DataError if the record's target does not fit ``task`` with ``num_classes``."""
    target = record.target
    if task == "multiclass":
        ok = isinstance(target, int) and 0 <= target < num_classes
    else:
        ok = isinstance(target, tuple) and len(target) == num_classes
    if not ok:
        raise DataError(
            f"{record.where or record.id}: target {target!r} does not fit a {task} task "
            f"with {num_classes} classes"
        )
