"""Untrusted files never run code: pickles are refused before they are built; paths are explicit.

The malicious pickle would create a marker file if it were ever unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medpeft
from medpeft.backbones.weights import read_state_dict
from medpeft.cli import main
from medpeft.data.imageio import ReadOptions, load_image
from medpeft.data.sources import csv_source
from medpeft.errors import DataError, WeightsError
from medpeft.train.checkpoint import load_checkpoint
from medpeft.train.schedules import build_optimizer, build_scheduler

SOURCE = Path(medpeft.__file__).parent


class Payload:
    """Unpickling this creates ``marker`` (as ``open(marker, "w")`` would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def _one_line_refusal(error: pytest.ExceptionInfo, path: Path) -> None:
    text = str(error.value)
    assert "\n" not in text and str(path) in text and "refused to unpickle" in text


@pytest.mark.parametrize("name", ["evil.pth", "evil.bin", "evil.pt"])
def test_a_malicious_weights_file_is_refused_and_runs_nothing(tmp_path, marker, name):
    path = tmp_path / name
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    with pytest.raises(WeightsError) as error:
        read_state_dict(path)
    _one_line_refusal(error, path)
    assert not marker.exists()


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, marker):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "payload": Payload(marker)}, path)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, "adam", 1e-3)
    scheduler = build_scheduler(optimizer, "constant", 10)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    with pytest.raises(WeightsError) as error:
        load_checkpoint(path, model, optimizer, scheduler, scaler)
    _one_line_refusal(error, path)
    assert not marker.exists()


def test_a_malicious_npy_image_is_refused_and_runs_nothing(tmp_path, marker):
    path = tmp_path / "scan.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cannot read image .*scan\.npy: ValueError: .*allow_pickle=False"):
        load_image(path)
    assert not marker.exists()


def test_the_command_line_refuses_malicious_backbone_weights_in_one_line(tmp_path, marker, capsys):
    weights = tmp_path / "backbone.pth"
    torch.save({"payload": Payload(marker)}, weights)
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path / 'run'}", "data.source=synthetic",
            "data.num_samples=16", "model.backbone=vit_tiny_patch16_224", "model.img_size=32",
            f"model.weights={weights}",
            "train.device=cpu", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "refused to unpickle" in err and not marker.exists()


def test_no_unsafe_deserialisation_in_the_source():
    """Every torch.load passes weights_only=True, every np.load allow_pickle=False; no pickle/yaml.load."""
    unsafe = []
    for path in SOURCE.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(SOURCE)}:{number}: {line.strip()}"
            if "torch.load(" in line and "weights_only=True" not in line:
                unsafe.append(where)
            if re.search(r"\bnp\.load\(", line) and "allow_pickle=False" not in line:
                unsafe.append(where)
            if re.search(r"\b(pickle\.loads?|yaml\.load|yaml\.unsafe_load|joblib\.load)\(", line):
                unsafe.append(where)
    assert unsafe == []


def test_a_decompression_bomb_image_is_refused_by_medpefts_limit_not_pils(tmp_path, monkeypatch):
    """PIL's own check (``Image.MAX_IMAGE_PIXELS``) never refuses what ``max_pixels`` allows;
    beyond ``max_pixels`` the refusal names the size and the limit (more in tests/data/test_imageio.py)."""
    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # PIL alone refuses above twice this
    assert load_image(path, options=ReadOptions(max_pixels=64 * 64)).size == (64, 64)
    with pytest.raises(DataError, match=r"bomb\.png: image of 64 x 64 = 4,096 pixels is over the limit of 1,000 pixels"):
        load_image(path, options=ReadOptions(max_pixels=1000))


def test_manifest_paths_are_relative_to_the_root_and_may_leave_it_explicitly(tmp_path):
    """``..`` in a manifest resolves against ``data.root`` (documented in docs/bad-inputs.md):
    the manifest is the user's own file, like a config; absolute paths are kept as given."""
    (tmp_path / "images").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "shared.png")
    Image.new("L", (8, 8)).save(tmp_path / "images" / "own.png")
    manifest = tmp_path / "lists" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"image,label\n../shared.png,a\n{tmp_path / 'images' / 'own.png'},b\n")
    records = csv_source(manifest, split_col=None).records
    paths = [Path(r.values["image"][0]) for r in records]
    assert paths[0].resolve() == (tmp_path / "shared.png").resolve()
    assert paths[1] == tmp_path / "images" / "own.png"


def test_a_malicious_vilt_folder_is_refused_and_runs_nothing(tmp_path, marker):
    from transformers import ViltConfig

    from medpeft.backbones.vilt import _from_pretrained

    folder = tmp_path / "vilt"
    ViltConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    torch.save({"payload": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError) as error:
        _from_pretrained(folder)
    _one_line_refusal(error, folder)
    assert not marker.exists()
