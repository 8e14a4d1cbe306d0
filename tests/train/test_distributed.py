"""Several processes: sharded loaders, gathered evaluation, and a real two-process run.

The two-process run goes through ``accelerate launch`` (on CPU: gloo). It continues a
run whose first epoch one process trained (a checkpoint resumes on any number of
processes) and must end as one process with the same global batch does: same epochs,
adapter and predictions within float tolerance, one writer.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, RandomSampler

from medpeft.cli import main
from medpeft.data.loader import BatchShard, EvalShard, build_loader
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.errors import ConfigError
from medpeft.run_layout import ADAPTER_DIR
from medpeft.train import distributed
from medpeft.train.files import METRICS_CSV

# `accelerate launch` from Python: its CLI imports timm, which needs medpeft's torchvision shim.
LAUNCH = "import medpeft, sys; from accelerate.commands.accelerate_cli import main; sys.argv[0] = 'accelerate'; main()"
# Each launched process trains, then predicts (one start-up for both commands).
SCRIPT = textwrap.dedent(
    """
    import sys
    from medpeft.cli import main

    cut = sys.argv.index("--then")
    assert main(sys.argv[1:cut]) == 0
    assert main(sys.argv[cut + 1:]) == 0
    """
)
TINY = [
    "data.source=csv", "model.backbone=vit_tiny_patch16_224", "model.img_size=32",
    "model.pretrained=false", "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
    "model.dropout=0", "data.augment=false", "data.batch_size=8", "data.num_workers=0",
    "train.lr=0.003", "train.schedule=constant", "train.amp=false", "--quiet",
]


def test_batch_shards_split_every_global_batch():
    batches = BatchSampler(range(10), 4, drop_last=True)
    shards = [list(BatchShard(batches, rank, 2)) for rank in range(2)]
    assert shards[0] == [[0, 2], [4, 6]] and shards[1] == [[1, 3], [5, 7]]
    assert len(BatchShard(batches, 1, 2)) == len(batches) == 2


def test_eval_shards_are_equal_padded_slices():
    assert [list(EvalShard(5, rank, 2)) for rank in range(2)] == [[0, 1, 2], [3, 4, 4]]
    assert [list(EvalShard(2, rank, 3)) for rank in range(3)] == [[0], [1], [1]]
    rows = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(distributed.gather_rows(rows, 2), rows[:2])  # one process: trim only


def test_sharded_train_loader_keeps_the_single_process_batches():
    data = list(range(12))
    single = build_loader(data, 4, train=True, seed=3, shard=(0, 1))
    parts = [build_loader(data, 4, train=True, seed=3, shard=(rank, 2)) for rank in range(2)]
    merged = [sorted(a.tolist() + b.tolist()) for a, b in zip(*parts)]
    assert merged == [sorted(batch.tolist()) for batch in single]
    assert isinstance(parts[0].batch_sampler.batches.sampler.order, RandomSampler)
    with pytest.raises(ConfigError, match="data.batch_size: 5 is the global batch of 2"):
        build_loader(data, 5, train=True, shard=(0, 2))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _predict_argv(adapter: Path, images: list[Path], out: Path) -> list[str]:
    return ["predict", str(adapter), *map(str, images), "--output", str(out), "--quiet"]


def _scores(path: Path) -> tuple[list[str], torch.Tensor]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [r["id"] for r in rows], torch.tensor([[float(r["lesion"]), float(r["normal"])] for r in rows])


def _epochs(run: Path) -> list[dict[str, float]]:
    with open(run / METRICS_CSV) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    manifest = make_synthetic_dataset(tmp_path / "data", n_per_class=14, img_size=32, seed=0)
    images = sorted((manifest.parent / "images").glob("*.png"))[:7]  # odd: padded slices
    config = ["train", "melo_shenzhen", f"data.manifest={manifest}", *TINY]

    one = tmp_path / "one"
    assert main([*config, f"output_dir={one}", "train.epochs=2"]) == 0
    assert main(_predict_argv(one / ADAPTER_DIR, images, tmp_path / "one.csv")) == 0

    two = tmp_path / "two"
    assert main([*config, f"output_dir={two}", "train.epochs=1"]) == 0  # epoch 0 on one process
    script = tmp_path / "both.py"
    script.write_text(SCRIPT)
    launch = [
        sys.executable, "-c", LAUNCH, "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(script),
        *config, f"output_dir={two}", "train.epochs=2", "--then",
        *_predict_argv(two / ADAPTER_DIR, images, tmp_path / "two.csv"),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    assert done.stdout.count("best epoch:") == 1  # one process reports
    for expected, got in zip(_epochs(one), _epochs(two), strict=True):
        assert expected.keys() == got.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=2e-4), key
    weights = [load_file(str(run / ADAPTER_DIR / "adapter_model.safetensors")) for run in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=2e-5, rtol=1e-4)
    (ids_one, scores_one), (ids_two, scores_two) = _scores(tmp_path / "one.csv"), _scores(tmp_path / "two.csv")
    assert ids_two == ids_one == [str(p) for p in images]  # each sample once, in order
    torch.testing.assert_close(scores_two, scores_one, atol=2e-4, rtol=0)
