"""End to end through the command line: train, resume, eval, predict, export, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from medpeft.cli import builtin_configs, main
from medpeft.data.missing import MissingSetting
from medpeft.data.synthetic import make_synthetic_dataset

TINY = ["model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
        "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        "data.batch_size=16", "data.num_workers=0",
        "train.amp=false", "train.device=cpu", "train.lr=0.003", "train.warmup=0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    return make_synthetic_dataset(out, ("normal", "lesion"), n_per_class=16, img_size=32, seed=0)


def _train(tmp_path: Path, manifest: Path, *extra: str) -> Path:
    run = tmp_path / "run"
    argv = ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv",
            f"data.manifest={manifest}", *TINY, *extra, "--quiet"]
    assert main(argv) == 0
    return run


def test_train_writes_run_folder_and_resumes(tmp_path, dataset, capsys):
    run = _train(tmp_path, dataset, "train.epochs=2")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 2 and config["lora"]["rank"] == 4
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["labels"] == ["lesion", "normal"]
    assert "auroc" in json.loads((run / "test_metrics.json").read_text())
    with open(run / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert "| run |" in capsys.readouterr().out
    # Asking for more epochs continues from the checkpoint: epochs 0-1 are not repeated.
    _train(tmp_path, dataset, "train.epochs=3")
    with open(run / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]


def test_eval_predict_and_export(tmp_path, dataset, capsys):
    run = _train(tmp_path, dataset, "train.epochs=1")
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert "auroc" in capsys.readouterr().out
    images = sorted((dataset.parent / "images").glob("*.png"))[:3]
    out_csv = tmp_path / "preds.csv"
    assert main(["predict", str(run / "adapter"), *map(str, images), "--output", str(out_csv)]) == 0
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        assert float(row["lesion"]) + float(row["normal"]) == pytest.approx(1.0, abs=1e-3)
        assert row["prediction"] in ("lesion", "normal")
    assert main(["export", str(run / "adapter"), "--output", str(tmp_path / "peft")]) == 0
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_bad_override_is_a_one_line_error(tmp_path, dataset, capsys):
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path}", f"data.manifest={dataset}",
            "data.source=csv", "train.lr=-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train" in err and "lr" in err and "Traceback" not in err


def test_missing_image_is_named(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\nmissing.png,normal\n")
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path / 'r'}", "data.source=csv",
            f"data.manifest={manifest}", *TINY]
    assert main(argv) == 2
    assert "missing.png" in capsys.readouterr().err


def test_unknown_config_lists_builtins(capsys):
    assert main(["train", "no_such_config"]) == 2
    err = capsys.readouterr().err
    assert "no_such_config" in err and "melo_shenzhen" in err


def test_builtin_configs_load():
    from medpeft.cli import is_multimodal_config
    from medpeft.config import load_config
    from medpeft.multimodal_config import load_multimodal_config

    names = builtin_configs()
    assert {"melo_shenzhen", "melo_blood_cells", "melo_chestxray14", "melo_inbreast"} <= set(names)
    assert {"mora_odir", "mora_iu_xray", "mora_synthetic"} <= set(names)
    for name, path in names.items():
        assert path.read_text().startswith(f"# How to run: medpeft train {name}")
        if is_multimodal_config(path):
            config = load_multimodal_config(path)
            assert config.method == "mora" and config.mora.rank == 4 and list(config.mora.blocks) == [0]
            assert config.missing.train == MissingSetting(0.7, "both")
            assert config.train.lr == 5e-3 and config.train.monitor == "f1_macro"
            continue
        config = load_config(path)
        assert config.lora.rank == 4 and config.lora.alpha == 4.0 and config.method == "lora"
        assert config.model.img_size in (224, 384)


def test_adapter_remembers_its_backbone_weights(tmp_path, dataset, capsys):
    from safetensors.torch import save_file

    from medpeft.backbones import build_vit

    backbone = build_vit("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    run = _train(tmp_path, dataset, "train.epochs=1", f"model.weights={weights}")
    image = str(sorted((dataset.parent / "images").glob("*.png"))[0])
    capsys.readouterr()
    assert main(["predict", str(run / "adapter"), image]) == 0
    recorded = capsys.readouterr().out
    assert main(["predict", str(run / "adapter"), image, "--weights", str(weights)]) == 0
    assert capsys.readouterr().out == recorded  # the recorded checkpoint was used
    weights.rename(tmp_path / "moved.safetensors")
    assert main(["predict", str(run / "adapter"), image]) == 2
    err = capsys.readouterr().err
    assert "backbone.safetensors" in err and "--weights" in err
