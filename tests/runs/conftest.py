"""Tiny runs shared by the run tests: one image modality (LoRA) and two (MoRA, synthetic).

Factories train through the command line (``medpeft train``); the ``*_run``
fixtures are trained once per package and only read afterwards (eval rewrites
the same metrics files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset

CPU = ["train.amp=false", "train.device=cpu", "data.num_workers=0"]
TINY_IMAGE = [
    "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
    "data.batch_size=16", "train.lr=0.003", "train.warmup=0", *CPU,
]
TINY_SYNTHETIC = [
    "model.img_size=16",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
    "data.num_samples=40",
    "data.batch_size=16",
    "missing.grid.etas=[0.3, 0.9]",
    *CPU,
]

Train = Callable[..., Path]


def one_line(err: str) -> str:
    """The one ``medpeft ...`` error line of a command's stderr (no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("medpeft ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="session")
def image_manifest(tmp_path_factory) -> Path:
    """A two-class single-image dataset (``normal``/``lesion``, 16 PNGs each) and its manifest."""
    out = tmp_path_factory.mktemp("data")
    return make_synthetic_dataset(out, ("normal", "lesion"), n_per_class=16, img_size=32, seed=0)


@pytest.fixture(scope="session")
def image_argv(image_manifest) -> Callable[..., list[str]]:
    """``image_argv(run, *overrides)``: the ``medpeft train`` arguments of a tiny image run."""

    def argv(run: Path, *extra: str) -> list[str]:
        return ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv",
                f"data.manifest={image_manifest}", *TINY_IMAGE, *extra, "--quiet"]

    return argv


@pytest.fixture(scope="session")
def train_image(image_argv) -> Train:
    """``train_image(run, *overrides)``: ``medpeft train melo_shenzhen`` on the tiny image data."""

    def train(run: Path, *extra: str) -> Path:
        assert main(image_argv(run, *extra)) == 0
        return run

    return train


@pytest.fixture(scope="session")
def train_synthetic() -> Train:
    """``train_synthetic(run, *overrides)``: ``medpeft train mora_synthetic``, tiny (modalities a, b)."""

    def train(run: Path, *extra: str) -> Path:
        argv = ["train", "mora_synthetic", f"output_dir={run}", *TINY_SYNTHETIC, *extra, "--quiet"]
        assert main(argv) == 0
        return run

    return train


@pytest.fixture(scope="package")
def image_run(tmp_path_factory, train_image) -> Path:
    """A finished one-epoch LoRA run on one image modality."""
    return train_image(tmp_path_factory.mktemp("image") / "run", "train.epochs=1")


@pytest.fixture(scope="package")
def mora_run(tmp_path_factory, train_synthetic) -> Path:
    """A finished one-epoch MoRA run on two image modalities (``a``, ``b``)."""
    return train_synthetic(tmp_path_factory.mktemp("mora") / "run", "train.epochs=1")
