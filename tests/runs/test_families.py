"""``medpeft train`` / ``eval`` / ``predict`` / ``report`` on every backbone family.

Tiny random-init models: timm Swin and ConvNeXt by name, a transformers DINOv2 folder as
``model.weights`` (``save_pretrained`` + its own ``preprocessor_config.json``) and an open_clip model of a
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
from medpeft.run_layout import RunLayout
from medpeft.runs.data import load_source

from .conftest import CPU, one_line

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
        "dinov2": (["model.kind=transformers", "model.backbone=tiny-rad-dino",
                    f"model.weights={save_dinov2(root / 'dinov2')}", "model.img_size=null"], DINOV2_INPUT),
        "open_clip": (["model.kind=open_clip", f"model.backbone={write_open_clip(root / 'open_clip')}",
                       "model.img_size=null"], OPEN_CLIP_INPUT),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_train_eval_predict_report(family, family_args, image_manifest, tmp_path):
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

    assert main(["report", str(run), "--resamples", "20"]) == 0
    page = (run / "report" / "index.html").read_text()
    params = json.loads((run / "report.json").read_text())["params"]
    assert 0 < params["trainable"] < params["total"]
    assert f"<td>trainable parameters</td><td>{params['trainable']:,}</td>" in page
    assert f"<td>model parameters</td><td>{params['total']:,}</td>" in page
    kind = adapter["kind"]
    assert f"<td>backbone</td><td>{adapter['backbone']}{f' ({kind})' if kind != 'timm' else ''}</td>" in page


def _test_split_files(run: Path) -> list[str]:
    """The image files of a run's test split, in the order eval scored them."""
    layout = RunLayout.at(run)
    source = load_source(load_config(layout.config), layout)
    return [record.values["image"][0] for record in source.split("test")]


DINOV2_KWARGS = ("model.kwargs={model_type: dinov2, hidden_size: 32, num_hidden_layers: 2, "
                 "num_attention_heads: 2, image_size: 32, patch_size: 8}")
SWIN_ARGS = _timm(*SWIN)
CONVNEXT_ARGS = _timm(*CONVNEXT)


@pytest.mark.parametrize(("config", "overrides", "message"), [
    ("melo_shenzhen", ["method=mora", *SWIN_ARGS],
     "method 'mora' needs a backbone with a token stream; SwinTransformer (timm) has none"),
    ("melo_shenzhen", ["method=mora", "model.kind=transformers", "model.backbone=tiny", DINOV2_KWARGS],
     "method 'mora' acts on a token stream of several modalities; Dinov2Model (transformers) reads one "
     "image here: give it data.modalities"),
    ("melo_shenzhen", ["method=prompts", "model.kind=open_clip", "OPEN_CLIP", "model.img_size=null"],
     "method 'prompts' needs model kind 'vilt'"),
    ("mora_synthetic", ["method=lora", "model.fusion=late", "model.kind=transformers", "model.backbone=tiny",
                        DINOV2_KWARGS],
     "model.kind 'transformers' (tiny) takes one image modality with model.fusion: auto; model.fusion 'late' "
     "needs a timm ViT (model.kind: timm, family timm_vit"),
    ("mora_synthetic", ["method=lora", "model.fusion=late", *CONVNEXT_ARGS],
     "convnext_tiny (ConvNeXt, family timm_hier) takes one image modality with model.fusion: auto; "
     "model.fusion 'late' needs a timm ViT"),
    ("mora_synthetic", ["method=lora", "model.fusion=early_intervention", *SWIN_ARGS],
     "swin_tiny_patch4_window7_224 (SwinTransformer, family timm_hier) takes one image modality with "
     "model.fusion: auto; model.fusion 'early_intervention' needs a backbone whose blocks take an attention mask "
     "(timm ViTs, transformers, open_clip ViTs)"),
    ("mora_synthetic", ["method=lora", "data.missing_image=token", *SWIN_ARGS],
     "data.missing_image: token (a learned token per missing image) needs a backbone with a token stream"),
    ("melo_shenzhen", ["model.kind=open_clip", "OPEN_CLIP", "model.img_size=64"],
     "model.img_size: 64, but the open_clip tower local-dir:"),
], ids=["mora-swin", "mora-transformers", "prompts-open_clip", "late-transformers",
        "late-convnext", "ei-swin", "missing-token-swin", "size-open_clip"])
def test_what_a_backbone_cannot_run_is_one_line_before_anything_is_written(
    config, overrides, message, image_manifest, tmp_path, capsys
):
    model = write_open_clip(tmp_path / "open_clip")
    overrides = [f"model.backbone={model}" if o == "OPEN_CLIP" else o for o in overrides]
    run = tmp_path / "run"
    data = ([f"data.manifest={image_manifest}", "data.source=csv"] if config == "melo_shenzhen"
            else ["data.num_samples=40"])
    argv = ["train", config, f"output_dir={run}", "model.pretrained=false", *data, *CPU, *overrides, "--quiet"]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert message in line
    written = {p.name for p in run.iterdir()} if run.exists() else set()
    assert not written & {"config.yaml", "checkpoint.pt", "stage1", "adapter"}, written


@pytest.mark.parametrize("backbone", ["transformers", "open_clip"])
def test_mora_over_two_modalities_in_one_stream_trains_on_library_backbones(backbone, tmp_path):
    """Several image modalities share one token stream of a transformers or open_clip backbone."""
    model = (["model.kind=transformers", "model.backbone=tiny", DINOV2_KWARGS] if backbone == "transformers"
             else ["model.kind=open_clip", "model.kwargs={}", f"model.backbone={write_open_clip(tmp_path / 'open_clip')}",
                   "model.img_size=null"])
    run = tmp_path / "run"
    argv = ["train", "mora_synthetic", f"output_dir={run}", "model.pretrained=false", "data.num_samples=40",
            "train.epochs=1", "data.missing_image=token", *CPU, *model, "--quiet"]
    assert main(argv) == 0
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["method"] == "mora" and adapter["kind"] == backbone and len(adapter["modalities"]) == 2
    assert main(["eval", str(run)]) == 0
