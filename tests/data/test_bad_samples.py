"""Hostile image files in a manifest: one scan lists them all; training stops on one line or skips.

The bad files are a corrupt PNG, a truncated JPEG, pydicom's real truncated DICOM
(``MR_truncated.dcm``) and an all-NaN ``.npy``, among readable PNGs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medpeft.cli import main
from medpeft.data.collate import Collate
from medpeft.data.dataset import Dataset
from medpeft.data.loader import SkippedSamples, SkippingLoader, build_loader
from medpeft.data.scan import check_images
from medpeft.data.sources import csv_source
from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError, DataError
from medpeft.train.settings import TrainSettings

BAD = ("corrupt.png", "truncated.jpg", "truncated.dcm", "nan.npy")
KINDS = {"image": "image"}
TINY = [
    "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "data.batch_size=4",
    "train.amp=false", "train.device=cpu", "train.epochs=2", "data.check_images=none",
]


def write_bad_files(folder: Path) -> None:
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not image data" * 8)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        folder / "truncated.jpg", quality=90
    )
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    shutil.copy(get_testdata_file("MR_truncated.dcm"), folder / "truncated.dcm")
    np.save(folder / "nan.npy", np.full((32, 32), np.nan))


@pytest.fixture
def manifest(tmp_path) -> Path:
    """12 readable PNGs (two classes) with the bad files at rows 2, 5, 8 and 11 of the training split."""
    rng = np.random.default_rng(0)
    rows, bad = [], iter(BAD)
    for i in range(16):
        label = ("normal", "lesion")[i % 2]
        split = "train" if i < 12 else ("val", "test")[(i // 2) % 2]
        if i % 3 == 1 and i < 12:
            name = next(bad)
        else:
            name = f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(tmp_path / name)
        rows.append(f"{name},{label},{split}")
    write_bad_files(tmp_path)
    path = tmp_path / "manifest.csv"
    path.write_text("image,label,split\n" + "\n".join(rows) + "\n")
    return path


def dataset(manifest: Path, on_bad_sample: str) -> Dataset:
    source = csv_source(manifest)
    transform = build_transform(8, mean=(0, 0, 0), std=(1, 1, 1))
    return Dataset.from_source(source, "train", {"image": transform}, on_bad_sample=on_bad_sample)


def test_the_scan_lists_every_bad_row_in_one_error(manifest):
    with pytest.raises(DataError) as err:
        check_images(csv_source(manifest).records, KINDS, "data")
    lines = str(err.value).splitlines()
    assert lines[0] == "4 unreadable image(s) in the data:"
    for line, name in zip(lines[1:], BAD):
        assert "manifest.csv line" in line and name in line
    assert "1024 of 1024 pixels are NaN or infinite" in lines[4]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_leaves_bad_samples_out_and_logs_each_once(manifest, workers, caplog):
    skipped = SkippedSamples()
    loader = SkippingLoader(
        build_loader(dataset(manifest, "skip"), 3, train=True, num_workers=workers, collate_fn=Collate()),
        skipped,
    )
    with caplog.at_level(logging.WARNING, logger="medpeft"):
        counts = [sum(len(targets) for _, targets in loader) for _ in range(2)]
    assert counts == [8, 8]  # 12 training samples, 4 unreadable
    assert len(skipped) == 4 and all(sum(name in m for m in skipped) == 1 for name in BAD)
    for name in BAD:
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name


def test_a_batch_of_skipped_samples_only_is_left_out(manifest):
    data = dataset(manifest, "skip")
    bad = [i for i, r in enumerate(data.records) if Path(r.values["image"][0]).name in BAD]
    inputs, targets = Collate()([data[i] for i in bad])
    assert len(targets) == 0 and len(inputs["skipped"]) == 4 and "images" not in inputs
    loader = SkippingLoader([(inputs, targets)], SkippedSamples())
    assert list(loader) == [] and len(loader.skipped) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_raises_naming_the_row_and_file(manifest, workers):
    loader = build_loader(dataset(manifest, "stop"), 3, train=False, num_workers=workers, collate_fn=Collate())
    with pytest.raises(DataError, match=r"manifest\.csv line 3 column 'image': cannot read image .*corrupt\.png"):
        list(loader)


def _argv(manifest: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv",
            f"data.manifest={manifest}", *TINY, *extra, "--quiet"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_stops_with_one_line_naming_the_file(manifest, tmp_path, capsys, workers):
    run = tmp_path / "run"
    assert main(_argv(manifest, run, f"data.num_workers={workers}", "data.augment=false")) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medpeft ")]
    assert "Traceback" not in err and len(lines) == 1
    assert lines[0].startswith("medpeft train: error: ") and "manifest.csv line " in lines[0]
    assert any(name in lines[0] for name in BAD) and not (run / "adapter").exists()


def test_a_skipping_run_finishes_and_reports_the_skipped_files(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_argv(manifest, run, "data.num_workers=0", "train.on_bad_sample=skip")) == 0
    captured = capsys.readouterr()
    report = json.loads((run / "report.json").read_text())
    samples = report["skipped_samples"]["samples"]
    assert report["skipped_samples"]["count"] == 4
    assert all(sum(name in m and "manifest.csv line" in m for m in samples) == 1 for name in BAD)
    for name in BAD:
        assert sum(name in line for line in captured.err.splitlines()) == 1, name  # logged once
    assert "skipped 4 unreadable sample(s), listed in report.json" in captured.out


def test_an_unknown_policy_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.on_bad_sample: expected 'stop' or 'skip', got 'ignore'"):
        TrainSettings(on_bad_sample="ignore")
    with pytest.raises(ConfigError, match=r"train\.on_bad_sample: expected one of"):
        Dataset([], ("image",), KINDS, {}, on_bad_sample="ignore")
