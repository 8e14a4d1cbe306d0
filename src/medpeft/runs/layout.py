"""Every file name of a run folder, in one place.

A run folder holds the resolved ``config.yaml``; the trainer's ``metrics.csv``,
``tensorboard/``, ``checkpoint.pt`` (resume state) and ``best.safetensors``; the
``adapter/`` folder; ``{split}_metrics.json``; for several modalities the seeded
``missing_{split}.csv`` tables and the grid reports ``grid.md``, ``grid.json``,
``grid_heatmap.png``, ``grid_curves.png``; the ``synthetic_data/`` of a
synthetic run; ``report.json``, written last, marks a finished run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
ADAPTER_DIR = "adapter"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
SYNTHETIC_DIR = "synthetic_data"
REPORT = "report.json"
GRID = "grid"


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

    def missing_table(self, split: str) -> Path:
        """The seeded missing-modality table of ``split``."""
        return self.root / f"missing_{split}.csv"

    def grid_stem(self, split: str) -> Path:
        """Stem of the grid reports of ``split`` (``grid`` for test, ``grid_val``...)."""
        return self.root / (GRID if split == "test" else f"{GRID}_{split}")
