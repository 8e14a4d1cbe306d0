"""A full disk or Ctrl-C in the middle of a run: one clear line, the last checkpoint intact, resumable.

(The other hostile inputs are tested where their code lives; docs/bad-inputs.md lists them all.)
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import medpeft.train.checkpoint as checkpoint
import medpeft.train.trainer as trainer
from medpeft.atomic import atomic_write
from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.train.files import CHECKPOINT, METRICS_CSV

TINY = [
    "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "data.batch_size=4",
    "data.num_workers=0", "train.amp=false", "train.device=cpu", "train.epochs=2",
]


@pytest.fixture
def argv(tmp_path) -> list[str]:
    manifest = make_synthetic_dataset(tmp_path / "data", n_per_class=8, img_size=32)
    return ["train", "melo_shenzhen", f"output_dir={tmp_path / 'run'}", "data.source=csv",
            f"data.manifest={manifest}", *TINY, "--quiet"]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("medpeft ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _epochs_logged(run: Path) -> int:
    return len((run / METRICS_CSV).read_text().splitlines()) - 1


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(argv, tmp_path, capsys, monkeypatch):
    run, saves = tmp_path / "run", []

    def full_on_second_save(path, write):
        saves.append(path)
        if len(saves) == 1:
            return atomic_write(path, write)
        saves.append(path.read_bytes())  # epoch 0's checkpoint, about to be replaced

        def half_then_full(tmp: Path) -> None:
            tmp.write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

        return atomic_write(path, half_then_full)

    monkeypatch.setattr(checkpoint, "atomic_write", full_on_second_save)
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (f"medpeft train: error: {run / CHECKPOINT}: No space left on device; "
                    f"any earlier version of the file is kept (errno {errno.ENOSPC})")
    assert not list(run.glob(".*.tmp"))  # the half-written file is gone
    monkeypatch.undo()
    assert (run / CHECKPOINT).read_bytes() == saves[-1] and _epochs_logged(run) == 1
    assert main(argv) == 0  # the same command resumes after epoch 0, the last saved one
    assert _epochs_logged(run) == 2 and (run / "report.json").is_file()


def test_ctrl_c_mid_epoch_stops_cleanly_and_the_rerun_resumes(argv, tmp_path, capsys, monkeypatch):
    run, steps = tmp_path / "run", []
    original = trainer._optimizer_step

    def interrupt_in_epoch_1(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:  # two optimizer steps per epoch: this is epoch 1's first
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "_optimizer_step", interrupt_in_epoch_1)
    assert main(argv) == 130
    assert "interrupted (a training run resumes from its last finished epoch" in _error_line(
        capsys.readouterr().err
    )
    first_epoch = (run / METRICS_CSV).read_text()
    assert _epochs_logged(run) == 1 and (run / CHECKPOINT).is_file()
    monkeypatch.undo()
    assert main(argv) == 0
    assert (run / METRICS_CSV).read_text().startswith(first_epoch) and _epochs_logged(run) == 2
