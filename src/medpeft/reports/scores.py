"""Per-sample scores of a split: ``predictions_{split}.csv`` in a run folder.

One row per sample: ``target`` (the class, or the ``|``-joined labels of a
multilabel sample), then one probability column per label in label order. Label
names that a spreadsheet would evaluate are escaped (`medpeft.data.csvfile`).
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


@dataclass
class SplitScores:
    """Probabilities ``[N, C]`` and targets (class indices ``[N]`` or 0/1 ``[N, C]``)."""

    labels: list[str]
    task: str
    scores: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        check_task(self.task)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.targets = np.asarray(self.targets).astype(np.int64)

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
        writer.writerow([TARGET, *self.labels])
        for truth, row in zip(self.truth, self.scores):
            target = "|".join(label for label, on in zip(self.labels, truth) if on)
            writer.writerow([target, *(f"{p:.6g}" for p in row)])
        return atomic_write_text(path, text.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path, task: str) -> SplitScores:
        """Scores written by `write_csv`."""
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [[plain_cell(cell) for cell in row] for row in csv.reader(handle)]
        if not rows or rows[0][:1] != [TARGET] or len(rows) < 2:
            raise DataError(f"{path}: expected a '{TARGET}' column, one column per label and rows")
        labels = rows[0][1:]
        truth = np.array([_indicators(row[0], labels, path) for row in rows[1:]], dtype=np.int64)
        scores = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
        targets = truth.argmax(1) if task == "multiclass" else truth
        return cls(labels, task, scores, targets)


def _indicators(text: str, labels: Sequence[str], path: str | Path) -> list[int]:
    names = [name for name in text.split("|") if name]
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise DataError(f"{path}: targets {unknown} are not among the labels {list(labels)}")
    return [int(label in names) for label in labels]
