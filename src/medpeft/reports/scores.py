"""Per-sample scores of a split: ``predictions_{split}.csv`` in a run folder.

One row per sample: ``id``, the input file(s) of each image modality (``path``
for one image modality, ``path_<modality>`` for several; ``|``-joined when a
sample has several files), ``target`` (the class, or the ``|``-joined labels of a
multilabel sample), ``predicted`` (the top class; multilabel: the labels scoring
0.5 or more), then one probability column per label in label order. Files
written before medpeft named samples start at ``target`` and still read. Cells
that a spreadsheet would evaluate are escaped (`medpeft.data.csvfile`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpeft.atomic import atomic_write_text
from medpeft.data.csvfile import SpreadsheetWriter, plain_cell
from medpeft.errors import DataError
from medpeft.tasks import check_task

TARGET = "target"
ID = "id"
PREDICTED = "predicted"
PATH = "path"
MULTILABEL_THRESHOLD = 0.5


@dataclass
class SplitScores:
    """Probabilities ``[N, C]`` and targets (class indices ``[N]`` or 0/1 ``[N, C]``).

    ``ids`` and ``paths`` (column name -> one cell per sample, see the module docstring)
    name each sample; None for a file written before medpeft named them.
    """

    labels: list[str]
    task: str
    scores: np.ndarray
    targets: np.ndarray
    ids: list[str] | None = None
    paths: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        check_task(self.task)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.targets = np.asarray(self.targets).astype(np.int64)
        if self.ids is not None and len(self.ids) != len(self.scores):
            raise DataError(f"{len(self.ids)} sample ids for {len(self.scores)} rows of scores")

    @property
    def predicted(self) -> np.ndarray:
        """Predicted 0/1 indicators ``[N, C]``: the top class (multiclass), labels >= 0.5 (multilabel)."""
        if self.task == "multiclass":
            return np.eye(len(self.labels), dtype=np.int64)[self.scores.argmax(1)]
        return (self.scores >= MULTILABEL_THRESHOLD).astype(np.int64)

    @property
    def truth(self) -> np.ndarray:
        """Targets as 0/1 indicators ``[N, C]`` (one-hot for multiclass)."""
        if self.task == "multiclass":
            return np.eye(len(self.labels), dtype=np.int64)[self.targets]
        return self.targets

    def write_csv(self, path: str | Path) -> Path:
        """Write the scores as CSV atomically."""
        text = io.StringIO()
        writer = SpreadsheetWriter(text, lineterminator="\n")
        named = self.ids is not None
        paths = self.paths or {}
        writer.writerow([*([ID, *paths] if named else []), TARGET, *([PREDICTED] if named else []), *self.labels])
        for i, (truth, predicted, row) in enumerate(zip(self.truth, self.predicted, self.scores)):
            scores = [f"{p:.6g}" for p in row]
            if named:
                sample = [self.ids[i], *(column[i] for column in paths.values())]
                writer.writerow([*sample, self._names(truth), self._names(predicted), *scores])
            else:
                writer.writerow([self._names(truth), *scores])
        return atomic_write_text(path, text.getvalue())

    def _names(self, indicators: np.ndarray) -> str:
        return "|".join(label for label, on in zip(self.labels, indicators) if on)

    @classmethod
    def read_csv(cls, path: str | Path, task: str) -> SplitScores:
        """Scores written by `write_csv` (also those of medpeft versions without sample ids)."""
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [[plain_cell(cell) for cell in row] for row in csv.reader(handle)]
        header = rows[0] if rows else []
        named = header[:1] == [ID] and TARGET in header and PREDICTED in header
        if not (named or header[:1] == [TARGET]) or len(rows) < 2:
            raise DataError(f"{path}: expected a '{TARGET}' column, one column per label and rows")
        target = header.index(TARGET)
        first_score = header.index(PREDICTED, target) + 1 if named else 1
        labels, body = header[first_score:], rows[1:]
        truth = np.array([_indicators(row[target], labels, path) for row in body], dtype=np.int64)
        scores = np.array([[float(v) for v in row[first_score:]] for row in body])
        targets = truth.argmax(1) if task == "multiclass" else truth
        if not named:
            return cls(labels, task, scores, targets)
        paths = {name: [row[c] for row in body] for c, name in enumerate(header[1:target], start=1)}
        return cls(labels, task, scores, targets, [row[0] for row in body], paths)


def path_columns(modalities: Sequence[str]) -> list[str]:
    """The path column of each image modality: ``path`` for one, ``path_<modality>`` for several."""
    return [PATH] if len(modalities) == 1 else [f"{PATH}_{m}" for m in modalities]


def _indicators(text: str, labels: Sequence[str], path: str | Path) -> list[int]:
    names = [name for name in text.split("|") if name]
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise DataError(f"{path}: targets {unknown} are not among the labels {list(labels)}")
    return [int(label in names) for label in labels]
