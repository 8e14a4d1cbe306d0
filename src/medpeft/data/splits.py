"""Train/val/test splits: split names, fractions and seeded assignment.

`stratified_split` keeps each class's share in every split (multilabel: by the
rarest positive label, see `strata`); `seeded_split` gives exact counts (the
papers' split sizes of ODIR-5K and IU X-ray), stratified too when given the
targets. `assign_splits` gives every record of a `Source` without a split one,
stratified, keeping each group (`Record.group`, e.g. a patient) whole in one split.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import replace

import numpy as np

from medpeft.data.records import Record, Source, Target
from medpeft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def parse_split(value: str | None, where: str) -> str:
    """Canonical split name of a cell (DataError naming ``where`` if unknown)."""
    name = SPLIT_ALIASES.get((value or "").strip().lower())
    if name is None:
        raise DataError(f"{where}: bad split value {value!r}; expected one of {list(SPLITS)}")
    return name


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``fractions`` as 3 floats (train, val, test), each >= 0 with a positive sum, or ConfigError."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ConfigError(f"fractions must be 3 numbers >= 0 (train, val, test), got {fractions}")
    return tuple(float(f) for f in fractions)


def holdout_fractions(val_fraction: float, test_fraction: float) -> tuple[float, float, float]:
    """Train/val/test fractions from the config's ``data.val_fraction`` and ``data.test_fraction``."""
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction > 1:
        raise ConfigError(
            "data.val_fraction, data.test_fraction: need two numbers >= 0 summing to at most 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    return (max(0.0, 1.0 - val_fraction - test_fraction), val_fraction, test_fraction)


def strata(targets: Sequence[Target]) -> list[int]:
    """Group of each target: its class, or for 0/1 vectors its rarest positive label (-1: none)."""
    if not targets or isinstance(targets[0], int):
        return [int(t) for t in targets]
    counts = np.asarray(targets, dtype=np.float64).sum(axis=0)
    return [
        min((i for i, v in enumerate(t) if v > 0), key=lambda i: counts[i], default=-1)
        for t in targets
    ]


def stratified_split(
    targets: Sequence[Target],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> list[str]:
    """Seeded stratified train/val/test split: the split name of each target.

    Within each stratum (see `strata`) the samples are shuffled with ``seed``;
    ``round(n * val)`` go to val, ``round(n * test)`` to test, the rest to train
    (fractions are normalised to sum 1). With ``groups`` (one key per target, e.g.
    the patient) every group lands whole in one split: a group belongs to the stratum
    most of its samples have, the groups of a stratum are shuffled and each joins
    val, else test, while that brings the split closer to its count, else train (so
    counts are near, not exact). Without groups each sample is a group of its own,
    which is the exact split above.
    """
    fractions = check_fractions(fractions)
    total = sum(fractions)
    rng = np.random.default_rng(seed)
    units = _units(groups, len(targets))
    sample_strata = strata(targets)
    unit_strata = np.asarray([_majority([sample_strata[i] for i in unit]) for unit in units])
    assigned = ["train"] * len(targets)
    for stratum in sorted(set(unit_strata.tolist())):
        order = rng.permutation(np.flatnonzero(unit_strata == stratum))
        size = sum(len(units[u]) for u in order)
        n_val = min(size, round(size * fractions[1] / total))
        wanted = {"val": n_val, "test": min(size - n_val, round(size * fractions[2] / total))}
        filled = dict.fromkeys(wanted, 0)
        for u in order:
            members = units[u]
            # join a split while that brings it closer to its count (singletons: until it is reached)
            name = next((s for s in wanted if 2 * filled[s] + len(members) < 2 * wanted[s]), "train")
            if name != "train":
                filled[name] += len(members)
            for index in members:
                assigned[index] = name
    return assigned


def _units(groups: Sequence[Hashable] | None, count: int) -> list[list[int]]:
    """Sample indices of each group, in order of first appearance (no groups: one per sample)."""
    if groups is None:
        return [[i] for i in range(count)]
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return list(members.values())


def _majority(values: Sequence[int]) -> int:
    """The most common value (ties: the smallest)."""
    counts = Counter(values)
    return max(sorted(counts), key=counts.__getitem__)


def seeded_split(
    samples: int | Sequence[Target], weights: Sequence[float], seed: int = 0
) -> list[str]:
    """Assign ``train``/``val``/``test`` with exact counts in proportion to ``weights``.

    Counts are ``round(n * w / sum(weights))`` for train and val, the rest test
    (exact for weights that are a paper's split sizes). Given the targets, the
    order in which samples fill the splits interleaves the strata (see `strata`):
    each stratum's members are spread evenly, with seeded jitter, over one seeded
    sequence, so every split gets about its share of each stratum. Given only a
    count, the order is a plain seeded permutation.
    """
    weights = check_fractions(weights)
    total = sum(weights)
    n = samples if isinstance(samples, int) else len(samples)
    n_train = round(n * weights[0] / total)
    n_val = min(n - n_train, round(n * weights[1] / total))
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if isinstance(samples, int) else _interleaved(strata(samples), rng)
    splits = [""] * n
    for position, index in enumerate(order):
        splits[index] = names[position]
    return splits


def _interleaved(groups: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A seeded order of the samples in which every group is spread evenly."""
    groups = np.asarray(groups)
    keys = np.empty(len(groups))
    for group in sorted(set(groups.tolist())):
        members = rng.permutation(np.flatnonzero(groups == group))
        keys[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def given_group_splits(records: Sequence[Record]) -> dict[str, str]:
    """The split of each group a member of which has one given.

    DataError naming the group, both splits and a row of each if a group spans two.
    """
    first: dict[str, Record] = {}
    for record in records:
        if record.group is None or record.split is None:
            continue
        seen = first.setdefault(record.group, record)
        if seen.split != record.split:
            raise DataError(
                f"group {record.group!r} (data.group_col) spans two splits: {seen.split} "
                f"({seen.where or seen.id}) and {record.split} ({record.where or record.id}); "
                "keep every sample of a group in one split"
            )
    return {group: record.split for group, record in first.items()}


def assign_splits(
    source: Source, val_fraction: float, test_fraction: float, seed: int = 0, layout: str = "the data"
) -> Source:
    """``source`` with a stratified seeded split for every record that has none.

    Records that already have a split keep it. With groups (`Record.group`), a record
    without a split joins its group's given split, if any; the other groups are split
    whole (see `stratified_split`), and a group spanning two given splits is a
    DataError. Data given as train (and test) only get the missing splits carved from
    train (see `carve_from_train`; ``layout`` names the data in the message saying so).
    Raises ConfigError if train or val ends up empty.
    """
    given = given_group_splits(source.records)
    records = [
        replace(r, split=given[r.group]) if r.split is None and r.group in given else r
        for r in source.records
    ]
    unsplit = [i for i, r in enumerate(records) if r.split is None]
    fractions = holdout_fractions(val_fraction, test_fraction)
    _split_whole(records, unsplit, fractions, seed)
    records = carve_from_train(records, val_fraction, test_fraction, seed, layout)
    result = replace(source, records=records)
    empty = [s for s in ("train", "val") if not result.split(s)]
    if empty:
        grouped = any(r.group is not None for r in records)
        whole = "; data.group_col keeps each group whole, so small data need larger fractions" if grouped else ""
        raise ConfigError(
            f"data.val_fraction/data.test_fraction: the {empty} split(s) of {layout} are empty "
            f"(fractions {fractions} over {len(records)} samples{whole})"
        )
    return result


def _split_whole(records: list[Record], indices: Sequence[int], fractions: Sequence[float], seed: int) -> None:
    """Give ``records[i]`` for each of ``indices`` a stratified seeded split, groups whole, in place."""
    grouped = any(r.group is not None for r in records)
    groups = [_group_key(records[i]) for i in indices] if grouped else None
    names = stratified_split([records[i].target for i in indices], fractions, seed, groups)
    for index, name in zip(indices, names):
        records[index] = replace(records[index], split=name)


def carve_from_train(
    records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int, layout: str
) -> list[Record]:
    """``records`` with val (and test) carved from train when the data have none.

    Only train and test given: ``val_fraction`` of train goes to val. Only train given:
    ``val_fraction`` and ``test_fraction`` of train go to val and test. Stratified, seeded,
    groups whole; one log line names the layout and what was carved.
    """
    records = list(records)
    present = {r.split for r in records}
    if "train" not in present or "val" in present:
        return records
    carve = ["val"] if "test" in present else ["val", "test"]
    fractions = (1.0 - val_fraction, val_fraction, 0.0) if carve == ["val"] else holdout_fractions(
        val_fraction, test_fraction
    )
    train = [i for i, r in enumerate(records) if r.split == "train"]
    _split_whole(records, train, fractions, seed)
    given = " and ".join(s for s in SPLITS if s in present)
    shares = ", ".join(f"{name} {fractions[SPLITS.index(name)]:.0%}" for name in carve)
    whole = ", groups kept whole" if any(r.group is not None for r in records) else ""
    log.info(
        "data: %s has %s only; carved %s from train (%s of each class, seed %d%s)",
        layout, given, " and ".join(carve), shares, seed, whole,
    )
    return records


def _group_key(record: Record) -> tuple[str, str]:
    """The unit a record is split with: its group, or (without one) the record alone."""
    return ("group", record.group) if record.group is not None else ("sample", record.id)
