"""Resume after ``kill -9`` ends exactly as an uninterrupted run: byte-equal adapter, equal epochs.

Each run is a real ``medpeft train`` process. The killed ones get SIGKILL from inside,
at a chosen optimizer step (the middle of an epoch) or right after a chosen epoch's
checkpoint (an epoch boundary); rerunning the same command resumes. The recipe has
everything random that training uses: shuffling, augmentation, backbone dropout 0.1
(``melo_shenzhen``) and, with ``num_workers: 2``, worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from medpeft.cli import main
from medpeft.run_layout import ADAPTER_DIR
from medpeft.train.files import METRICS_CSV

from .conftest import snapshot

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import medpeft.train.trainer as trainer

    where, at = sys.argv[1], int(sys.argv[2])
    name = "_optimizer_step" if where == "step" else "save_checkpoint"
    original, calls = getattr(trainer, name), []

    def killing(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(trainer, name, killing)
    from medpeft.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)
STEPS_PER_EPOCH = 4  # 19 training images, batch 4, last partial batch dropped


def _train(run: Path, manifest: Path, workers: int, kill: tuple[str, int] | None = None) -> int:
    argv = [
        "train", "melo_shenzhen", f"output_dir={run}", "data.source=csv", f"data.manifest={manifest}",
        "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
        "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        "data.batch_size=4", f"data.num_workers={workers}", "train.epochs=3", "train.lr=0.003",
        "train.amp=false", "train.device=cpu", "--quiet",
    ]
    where, at = kill or ("none", 0)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", KILLER, where, str(at), *argv], env=env, capture_output=True, text=True
    )
    assert done.returncode in (0, -9), done.stderr[-2000:]
    return done.returncode


def _outputs(run: Path) -> tuple[bytes, str, str]:
    return (
        (run / ADAPTER_DIR / "adapter_model.safetensors").read_bytes(),
        (run / METRICS_CSV).read_text(),
        (run / "test_metrics.json").read_text(),
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, image_manifest) -> dict[int, tuple[bytes, str, str]]:
    root = tmp_path_factory.mktemp("uninterrupted")
    out = {}
    for workers in (0, 2):
        assert _train(root / str(workers), image_manifest, workers) == 0
        out[workers] = _outputs(root / str(workers))
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kill", [("step", STEPS_PER_EPOCH + 2), ("save_checkpoint", 1)])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, image_manifest, uninterrupted, workers, kill):
    run = tmp_path / "run"
    assert _train(run, image_manifest, workers, kill) == -9
    assert not (run / ADAPTER_DIR).exists()
    assert _train(run, image_manifest, workers) == 0
    adapter, epochs, test = _outputs(run)
    expected_adapter, expected_epochs, expected_test = uninterrupted[workers]
    assert epochs == expected_epochs
    assert adapter == expected_adapter
    assert test == expected_test


def test_changing_num_workers_on_resume_changes_nothing(tmp_path, image_manifest, uninterrupted):
    assert uninterrupted[0] == uninterrupted[2]  # each sample's augmentation has its own seed
    run = tmp_path / "run"
    assert _train(run, image_manifest, 0, ("step", STEPS_PER_EPOCH + 2)) == -9
    assert _train(run, image_manifest, 2) == 0
    assert _outputs(run) == uninterrupted[0]


def test_a_finished_run_is_never_rewritten(tmp_path, image_argv, capsys):
    run = tmp_path / "run"
    assert main(image_argv(run, "train.epochs=2")) == 0
    before = snapshot(run)
    assert main(image_argv(run, "train.epochs=2", "train.lr=0.5", "lora.alpha=16")) == 2
    err = capsys.readouterr().err
    assert "lora.alpha: 4.0 -> 16.0; train.lr: 0.003 -> 0.5)" in err and "--no-resume" in err
    assert main(image_argv(run, "train.epochs=1")) == 2  # epochs only grow, to continue training
    assert "(train.epochs: 2 -> 1)" in capsys.readouterr().err
    assert snapshot(run) == before
    assert main(image_argv(run, "train.epochs=2")) == 0  # the same command again
    assert "| run |" in capsys.readouterr().out  # the stored report
    assert snapshot(run) == before


def test_no_resume_starts_over_with_new_settings(tmp_path, image_argv):
    run = tmp_path / "run"
    assert main(image_argv(run, "train.epochs=1")) == 0
    assert main(image_argv(run, "train.epochs=1", "train.lr=0.001", "--no-resume")) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.001
