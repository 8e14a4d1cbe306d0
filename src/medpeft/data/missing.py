"""Missing-modality protocol (MoRA / missing-aware prompts), generalised to N modalities.

A setting is a missing rate ``eta`` and a ``kind``:

* a modality name (``"text"``, ``"image"``, ``"oct"``...): ``int(N * eta)``
  chosen samples miss that modality, the rest are complete;
* ``"mixed"`` (alias ``"both"``): the chosen samples each miss exactly one
  modality, assigned round-robin starting from the last modality (last,
  second to last, ..., first, last...). With two modalities half miss the
  text (second) modality and half the image, and an odd one out misses the
  text, as in the public MoRA/MAP code (ODIR test tables: 118 text / 117 image).

A sample never loses every modality; with one modality there is nothing to
drop, so every table says "all present" (the protocol is a no-op).

Tables are seeded and nested: a seeded permutation fixes the order in which
samples are chosen, and a sample's rank in it fixes which modality it would
lose, so for one seed a larger ``eta`` only adds samples to the smaller
``eta``'s choice, and each sample loses the same modality under every rate.
Train and validation use the train setting; the test split may use its own,
which the public code applies to validation as well (`split_settings`).
Modalities that are genuinely absent from the data stay absent
(`effective_presence`).
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpeft.atomic import atomic_write_text
from medpeft.data.csvfile import SpreadsheetWriter, plain_cell
from medpeft.data.splits import SPLITS
from medpeft.errors import ConfigError, DataError

MIXED_KINDS = ("mixed", "both")


@dataclass(frozen=True)
class MissingSetting:
    """A missing rate in [0, 1] and a kind (a modality name, or ``"mixed"``/``"both"``)."""

    eta: float
    kind: str = "mixed"

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"missing rate eta must lie in [0, 1], got {self.eta}")

    @property
    def name(self) -> str:
        """Short label such as ``text@0.7``."""
        return f"{self.kind}@{self.eta:g}"


@dataclass
class MissingTable:
    """Per-sample presence of each modality for one split.

    Attributes:
        ids: sample ids, in table order.
        modalities: modality names; column ``j`` of ``present`` is ``modalities[j]``.
        present: Bool array ``[len(ids), len(modalities)]``.
        setting: the setting the table was drawn with.
        seed: the seed it was drawn with.
    """

    ids: list[str]
    modalities: tuple[str, ...]
    present: np.ndarray
    setting: MissingSetting
    seed: int

    def __post_init__(self) -> None:
        self._row = {sample_id: i for i, sample_id in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            raise DataError("missing table: sample ids are not unique")

    def presence(self, sample_id: str) -> tuple[bool, ...]:
        """Presence tuple of one sample, in modality order."""
        if sample_id not in self._row:
            raise DataError(f"missing table has no sample id {sample_id!r}")
        return tuple(bool(p) for p in self.present[self._row[sample_id]])

    def save(self, path: str | Path) -> Path:
        """Write the table atomically as ``.json`` or ``.csv`` (by suffix)."""
        path = Path(path)
        if path.suffix == ".json":
            return atomic_write_text(path, json.dumps(self._to_json(), indent=1))
        if path.suffix == ".csv":
            return atomic_write_text(path, self._to_csv())
        raise ConfigError(f"missing table file must end in .json or .csv: {path}")

    @classmethod
    def load(cls, path: str | Path) -> MissingTable:
        """Read a table written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"missing table file not found: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            return _from_json(json.loads(text)) if path.suffix == ".json" else _from_csv(text)
        except (KeyError, ValueError, IndexError) as err:
            raise DataError(f"malformed missing table {path}: {err}") from err

    def _to_json(self) -> dict:
        return {
            "eta": self.setting.eta,
            "kind": self.setting.kind,
            "seed": self.seed,
            "modalities": list(self.modalities),
            "ids": self.ids,
            "present": self.present.astype(int).tolist(),
        }

    def _to_csv(self) -> str:
        out = io.StringIO()
        out.write(f"# eta={self.setting.eta!r} kind={self.setting.kind} seed={self.seed}\n")
        writer = SpreadsheetWriter(out, lineterminator="\n")
        writer.writerow(["id", *self.modalities])
        for sample_id, row in zip(self.ids, self.present.astype(int).tolist()):
            writer.writerow([sample_id, *row])
        return out.getvalue()


def _from_json(data: dict) -> MissingTable:
    present = np.asarray(data["present"], dtype=bool).reshape(len(data["ids"]), -1)
    setting = MissingSetting(float(data["eta"]), str(data["kind"]))
    return MissingTable(
        [str(i) for i in data["ids"]],
        tuple(data["modalities"]),
        present,
        setting,
        int(data["seed"]),
    )


def _from_csv(text: str) -> MissingTable:
    header, body = text.split("\n", 1)
    meta = dict(item.split("=", 1) for item in header.lstrip("# ").split())
    rows = [[plain_cell(cell) for cell in row] for row in csv.reader(io.StringIO(body))]
    modalities = tuple(rows[0][1:])
    present = np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=bool)
    present = present.reshape(len(rows) - 1, len(modalities))
    setting = MissingSetting(float(meta["eta"]), meta["kind"])
    return MissingTable(
        [row[0] for row in rows[1:]], modalities, present, setting, int(meta["seed"])
    )


def _check_kind(kind: str, modalities: Sequence[str]) -> None:
    if not modalities:
        raise ConfigError("a missing-modality table needs at least one modality")
    if kind not in MIXED_KINDS and kind not in modalities:
        raise ConfigError(
            f"unknown missing type {kind!r}; expected one of {list(modalities)} or 'mixed'/'both'"
        )


def make_missing_table(
    samples: int | Sequence[str],
    modalities: Sequence[str],
    eta: float,
    kind: str = "mixed",
    seed: int = 0,
) -> MissingTable:
    """Draw a seeded missing table.

    Args:
        samples: number of samples (ids ``"0".."n-1"``) or the sample ids.
        modalities: modality names, in the dataset's order.
        eta: fraction of samples that lose a modality (``int(n * eta)`` of them; none
            with one modality).
        kind: a modality name, or ``"mixed"``/``"both"``.
        seed: random seed; the choice order depends on it only, so tables nest across ``eta``.
    """
    ids = [str(i) for i in range(samples)] if isinstance(samples, int) else list(map(str, samples))
    setting = MissingSetting(eta, kind)
    _check_kind(kind, modalities)
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen = order[: int(len(ids) * eta)] if len(modalities) > 1 else order[:0]
    present = np.ones((len(ids), len(modalities)), dtype=bool)
    if kind in MIXED_KINDS:
        ranks = np.arange(len(chosen))
        present[chosen, len(modalities) - 1 - ranks % len(modalities)] = False
    else:
        present[chosen, list(modalities).index(kind)] = False
    return MissingTable(ids, tuple(modalities), present, setting, seed)


def effective_presence(table_row: Sequence[bool], available: Sequence[bool]) -> tuple[bool, ...]:
    """Combine a table row with what the data genuinely holds.

    A genuinely absent modality stays absent. If the table would remove the
    last modality a sample really has, the table is ignored for that sample
    (its available modalities are kept), so no sample ever has nothing.
    """
    combined = tuple(bool(t) and bool(a) for t, a in zip(table_row, available))
    return combined if any(combined) else tuple(bool(a) for a in available)


def split_seed(seed: int, split: str) -> int:
    """A stable per-split seed, so splits draw independent tables."""
    return seed + zlib.crc32(split.encode())


def split_settings(
    train: MissingSetting,
    test: MissingSetting | None = None,
    test_applies_to_val: bool = False,
) -> dict[str, MissingSetting]:
    """Settings per split: train and val use ``train``; test uses ``test`` if given.

    With ``test_applies_to_val``, val uses the test setting too (as the public
    MoRA/MAP code does with its test-time override).
    """
    test = test or train
    return {"train": train, "val": test if test_applies_to_val else train, "test": test}


def make_split_tables(
    split_ids: Mapping[str, Sequence[str]],
    modalities: Sequence[str],
    settings: Mapping[str, MissingSetting],
    seed: int = 0,
) -> dict[str, MissingTable]:
    """One seeded table per split (seed derived from ``seed`` and the split name)."""
    unknown = set(split_ids) - set(settings)
    if unknown:
        raise ConfigError(f"no missing setting for split(s) {sorted(unknown)}")
    return {
        split: make_missing_table(
            ids, modalities, settings[split].eta, settings[split].kind, split_seed(seed, split)
        )
        for split, ids in split_ids.items()
    }


def save_tables(tables: Mapping[str, MissingTable], run_dir: str | Path, fmt: str = "csv") -> None:
    """Write ``missing_<split>.<fmt>`` for each split into the run folder."""
    for split, table in tables.items():
        table.save(Path(run_dir) / f"missing_{split}.{fmt}")


def load_tables(run_dir: str | Path, fmt: str = "csv") -> dict[str, MissingTable]:
    """Read the ``missing_<split>.<fmt>`` tables present in a run folder."""
    paths = {split: Path(run_dir) / f"missing_{split}.{fmt}" for split in SPLITS}
    return {split: MissingTable.load(p) for split, p in paths.items() if p.is_file()}


def test_grid(etas: Sequence[float], kinds: Sequence[str]) -> Iterator[MissingSetting]:
    """All test settings of a sweep, kind-major (``for kind: for eta``)."""
    for kind in kinds:
        for eta in etas:
            yield MissingSetting(float(eta), kind)


test_grid.__test__ = False  # a settings iterator, not a pytest test
