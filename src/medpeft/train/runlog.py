"""Run logs: ``metrics.csv`` (one row per epoch) and optional TensorBoard scalars."""

from __future__ import annotations

import io
from pathlib import Path

from medpeft.atomic import atomic_write_text
from medpeft.data.csvfile import SpreadsheetWriter
from medpeft.train.files import METRICS_CSV, TENSORBOARD_DIR


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` atomically, header once; columns are the union of keys in first-seen order.

    Rewriting the whole (small) file from the run history keeps it consistent
    after a resume: rows of epochs that were re-run never appear twice.
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = SpreadsheetWriter(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row.get(column, "") for column in columns] for row in rows)
    return atomic_write_text(path, buffer.getvalue())


class RunLog:
    """Writes epoch rows to ``out_dir/metrics.csv`` and scalars to TensorBoard when enabled."""

    def __init__(
        self, out_dir: str | Path, tensorboard: bool = False, purge_step: int | None = None
    ):
        """Open the logs; ``purge_step`` drops TensorBoard events from an interrupted run."""
        self.csv_path = Path(out_dir) / METRICS_CSV
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked

            self.writer = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        """Log ``prefix/name`` scalars at optimizer step ``step`` (no-op without TensorBoard)."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def epochs(self, history: list[dict], step: int) -> None:
        """Rewrite the CSV from the history and log the latest row's values."""
        write_csv(self.csv_path, history)
        latest = {k: v for k, v in history[-1].items() if k != "epoch"}
        self.scalars(latest, step, prefix="epoch")
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()
