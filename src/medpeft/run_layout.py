"""Every file name of a run folder, in one place.

A run folder holds the resolved ``config.yaml`` (file paths absolute) and
``data_fingerprint.json`` (which data it was trained on, `medpeft.runs.fingerprint`),
``backbone_weights.json`` (which backbone weights, `medpeft.runs.backbone_record`); the
trainer's ``metrics.csv``, ``tensorboard/``, ``checkpoint.pt`` (resume state) and
``best.safetensors`` (named in `medpeft.train.files`); the
``adapter/`` folder; ``{split}_metrics.json`` and the per-sample scores
``predictions_{split}.csv``; ``report/`` (``medpeft report``); for several modalities the seeded
``missing_{split}.csv`` tables and the grid reports ``grid.md``, ``grid.json``,
``grid_heatmap.png``, ``grid_curves.png``; the ``synthetic_data/`` of a
synthetic run; ``report.json``, written last, marks a finished run. ``medpeft eval`` with
another adapter, other data or other settings writes into ``evals/<name>/`` instead (the same
result files, its ``config.yaml`` and ``eval.json``: adapter, split and overrides). A run with
``train.repeats: N`` holds one such folder per repeat (``rep0`` ...) and
``summary.json`` / ``summary.md`` (mean and std of the test metrics). While a training
process writes the folder it holds ``run.lock`` (:mod:`medpeft.runs.lock`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
DATA_FINGERPRINT = "data_fingerprint.json"
BACKBONE_RECORD = "backbone_weights.json"
EVALS_DIR = "evals"
EVAL_RECORD = "eval.json"
ADAPTER_DIR = "adapter"
SYNTHETIC_DIR = "synthetic_data"
REPORT = "report.json"
GRID = "grid"
REPEAT_PREFIX = "rep"
SUMMARY = "summary"
PAGE_DIR = "report"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> RunLayout:
        return cls(Path(folder))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def data_fingerprint(self) -> Path:
        return self.root / DATA_FINGERPRINT

    @property
    def backbone_record(self) -> Path:
        """Which backbone weights the run started from (`medpeft.runs.backbone_record`)."""
        return self.root / BACKBONE_RECORD

    @property
    def evals(self) -> Path:
        """Folder of the evaluations that are not the run's own (``evals/<name>/``)."""
        return self.root / EVALS_DIR

    @property
    def eval_record(self) -> Path:
        """``eval.json`` of an ``evals/<name>/`` folder: what was evaluated."""
        return self.root / EVAL_RECORD

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_DIR

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def synthetic_data(self) -> Path:
        return self.root / SYNTHETIC_DIR

    def split_metrics(self, split: str) -> Path:
        """``{split}_metrics.json``."""
        return self.root / f"{split}_metrics.json"

    def predictions(self, split: str) -> Path:
        """``predictions_{split}.csv``: per-sample targets and scores."""
        return self.root / f"predictions_{split}.csv"

    @property
    def page(self) -> Path:
        """Folder of the HTML report page (``medpeft report``)."""
        return self.root / PAGE_DIR

    def missing_table(self, split: str) -> Path:
        """The seeded missing-modality table of ``split``."""
        return self.root / f"missing_{split}.csv"

    def grid_stem(self, split: str) -> Path:
        """Stem of the grid reports of ``split`` (``grid`` for test, ``grid_val``...)."""
        return self.root / (GRID if split == "test" else f"{GRID}_{split}")

    def repeat(self, index: int) -> Path:
        """Run folder of repeat ``index`` of a ``train.repeats`` run (``rep<index>``)."""
        return self.root / f"{REPEAT_PREFIX}{index}"

    def summary(self, suffix: str) -> Path:
        """``summary.json`` / ``summary.md``: mean and std over the repeats."""
        return self.root / f"{SUMMARY}.{suffix}"
