"""``medpeft train`` / ``eval`` / ``predict`` / ``report`` on every backbone family.

Tiny random-init models: timm Swin and ConvNeXt by name, a transformers DINOv2 folder
(``save_pretrained`` + its own ``preprocessor_config.json``) and an open_clip model of a
local config (``local-dir:``). Each run writes its folder and adapter, records its
backbone's own preprocessing, and is rebuilt from the run folder by eval, predict and
report with the same results.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fixtures.families import CONVNEXT, DINOV2_INPUT, OPEN_CLIP_INPUT, SWIN, save_dinov2, write_open_clip

from medpeft.backbones.base import IMAGENET_MEAN_STD
from medpeft.cli import main
from medpeft.config import load_config
from medpeft.runs.data import load_source
from medpeft.runs.layout import RunLayout

from .conftest import CPU

TIMM_INPUT = {"mean": IMAGENET_MEAN_STD[0], "std": IMAGENET_MEAN_STD[1], "interpolation": "bicubic"}
FAMILIES = ("swin", "convnext", "dinov2", "open_clip")


def _timm(name: str, kwargs: dict, side: int) -> list[str]:
    return [f"model.backbone={name}", f"model.img_size={side}", f"model.kwargs={json.dumps(kwargs)}"]


@pytest.fixture(scope="module")
def family_args(tmp_path_factory) -> dict[str, tuple[list[str], dict]]:
    """Per family: the ``medpeft train`` overrides and the preprocessing its adapter must record."""
    root = tmp_path_factory.mktemp("families")
    return {  # crop: timm's pretrained configs of swin_tiny (0.9) and convnext_tiny (0.95)
        "swin": (_timm(*SWIN), {**TIMM_INPUT, "size": 64, "crop": 0.9}),
        "convnext": ([*_timm(*CONVNEXT), "lora.targets=[fc1, fc2]"], {**TIMM_INPUT, "size": 32, "crop": 0.95}),
        "dinov2": (["model.kind=transformers", f"model.backbone={save_dinov2(root / 'dinov2')}",
                    "model.img_size=null"], DINOV2_INPUT),
        "open_clip": (["model.kind=open_clip", f"model.backbone={write_open_clip(root / 'open_clip')}",
                       "model.img_size=null"], OPEN_CLIP_INPUT),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_train_eval_predict_report(family, family_args, image_manifest, tmp_path, capsys):
    overrides, preprocessing = family_args[family]
    run = tmp_path / "run"
    argv = ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv", f"data.manifest={image_manifest}",
            "model.pretrained=false", "data.batch_size=16", "train.epochs=1", *CPU, *overrides, "--quiet"]
    assert main(argv) == 0
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in adapter["preprocessing"].items()}
    assert recorded == {**preprocessing, "resize": "crop"}
    trained = json.loads((run / "test_metrics.json").read_text())
    assert "auroc" in trained

    assert main(["eval", str(run)]) == 0  # rebuilt from the run folder: the same results
    assert json.loads((run / "test_metrics.json").read_text()) == pytest.approx(trained, nan_ok=True)

    test_files = _test_split_files(run)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run / "adapter"), *test_files, "--output", str(out), "--quiet"]) == 0
    with open(out) as f:
        predicted = [float(row[label]) for row in csv.DictReader(f) for label in ("lesion", "normal")]
    with open(run / "predictions_test.csv") as f:
        evaluated = [float(row[label]) for row in csv.DictReader(f) for label in ("lesion", "normal")]
    assert predicted == pytest.approx(evaluated, abs=1e-4)  # predict writes 4 decimals

    capsys.readouterr()
    assert main(["report", str(run), "--resamples", "20"]) == 0
    page = (run / "report" / "index.html").read_text()
    params = json.loads((run / "report.json").read_text())["params"]
    assert 0 < params["trainable"] < params["total"]
    assert f"<td>trainable parameters</td><td>{params['trainable']:,}</td>" in page
    assert f"<td>model parameters</td><td>{params['total']:,}</td>" in page


def _test_split_files(run: Path) -> list[str]:
    """The image files of a run's test split, in the order eval scored them."""
    layout = RunLayout.at(run)
    source = load_source(load_config(layout.config), layout)
    return [record.values["image"][0] for record in source.split("test")]
