"""The command line itself: arguments, one-line errors and exit codes, export.

Train / eval / predict runs end to end are in tests/runs/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpeft.adapters_io.folder import save_adapter
from medpeft.cli import builtin_configs, main
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.methods import MoraSettings
from medpeft.model import ModelSpec, build_model

TINY = ["model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
        "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        "data.batch_size=16", "data.num_workers=0",
        "train.amp=false", "train.device=cpu", "train.lr=0.003", "train.warmup=0"]
TINY_SYNTHETIC = ["model.img_size=16", "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
                  "data.num_samples=40", "data.batch_size=16", "data.num_workers=0",
                  "train.amp=false", "train.device=cpu"]


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


def test_export_writes_a_peft_folder(tmp_path, dataset):
    run = _train(tmp_path, dataset, "train.epochs=1")
    assert main(["export", str(run / "adapter"), "--output", str(tmp_path / "peft")]) == 0
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_export_of_a_mora_adapter_is_refused(tmp_path, capsys):
    kwargs = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2)
    spec = ModelSpec("vit_tiny_patch16_224", 4, "mora", MoraSettings(rank=4, blocks=(0,)), img_size=16,
                     modalities=("a", "b"), model_kwargs=kwargs)
    adapter = save_adapter(build_model(spec), tmp_path / "mora", spec, ["c0", "c1", "c2", "c3"], "multiclass")
    assert main(["export", str(adapter), "--output", str(tmp_path / "peft")]) == 2  # before any load
    err = capsys.readouterr().err
    assert "no Hugging Face PEFT equivalent" in err and "'mora'" in err and "Traceback" not in err
    assert not (tmp_path / "peft").exists()


def test_bad_override_is_a_one_line_error(tmp_path, dataset, capsys):
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path}", f"data.manifest={dataset}",
            "data.source=csv", "train.lr=-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train" in err and "lr" in err and "Traceback" not in err


def test_config_typo_suggests_the_key(tmp_path, dataset, capsys):
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path}", f"data.manifest={dataset}",
            "data.source=csv", "lora.rnk=3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "did you mean 'rank'" in err and "rnk" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


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


def test_configs_lists_every_builtin(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in builtin_configs())


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.kind=cnn", "model.kind"),
        ("missing.train.kind=sound", "missing.train.kind"),
        ("missing.grid.kinds=[a, c]", "missing.grid.kinds"),
        ("data.shuffle=true", "shuffle"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path, capsys, override, key):
    argv = ["train", "mora_synthetic", f"output_dir={tmp_path}", *TINY_SYNTHETIC, override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


@pytest.mark.parametrize("extra", [[], ["image.png", "--manifest", "inputs.csv"]])
def test_predict_takes_image_files_or_a_manifest(tmp_path, capsys, extra):
    assert main(["predict", str(tmp_path / "adapter"), *extra]) == 2
    assert "--manifest" in capsys.readouterr().err


@pytest.mark.parametrize("order", ["options first", "options last"])
def test_options_and_overrides_in_any_order(tmp_path, dataset, order):
    overrides = [f"output_dir={tmp_path / 'run'}", "data.source=csv", f"data.manifest={dataset}",
                 *TINY, "train.epochs=1"]
    options = ["--quiet", "--no-resume"]
    args = [*options, *overrides] if order == "options first" else [*overrides, *options]
    assert main(["train", "melo_shenzhen", *args]) == 0
    assert (tmp_path / "run" / "report.json").is_file()


def test_import_lora_vit_records_its_weights_and_predict_refuses_a_random_backbone(tmp_path, capsys):
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=32)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    g = torch.Generator().manual_seed(1)
    state = {f"w_{ab}_{i:03d}": torch.randn(*((4, 192) if ab == "a" else (192, 4)), generator=g)
             for ab in "ab" for i in range(24)}
    state["fc_192in_2out"] = torch.randn(2, 192, generator=g)
    lora_file = tmp_path / "tb_lora_4_4.safetensors"
    save_file(state, str(lora_file))
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (90, 30, 200)).save(image)
    common = ["import-lora-vit", str(lora_file), "--backbone", "vit_tiny_patch16_224", "--img-size", "32"]
    assert main([*common, "--weights", str(weights), "--output", str(tmp_path / "with")]) == 0
    config = json.loads((tmp_path / "with" / "adapter_config.json").read_text())
    assert config["backbone_weights"] == str(weights.resolve())
    assert main(["predict", str(tmp_path / "with"), str(image), "--quiet"]) == 0
    assert main([*common, "--output", str(tmp_path / "without")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "without"), str(image), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "records no backbone weights" in err and "--random-backbone" in err
    with pytest.warns(UserWarning, match="randomly initialised backbone"):
        assert main(["predict", str(tmp_path / "without"), str(image), "--random-backbone", "--quiet"]) == 0


def test_threads_option_and_env_reach_the_thread_policy(monkeypatch, capsys):
    configured = []
    monkeypatch.setattr("medpeft.cli.configure_threads", configured.append)
    monkeypatch.setenv("MEDPEFT_THREADS", "2")
    assert main(["configs"]) == 0
    assert main(["configs", "--threads", "3"]) == 0
    assert configured == [2, 3]


def test_bad_thread_count_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("MEDPEFT_THREADS", "many")
    assert main(["configs"]) == 2
    assert capsys.readouterr().err == (
        "medpeft configs: error: MEDPEFT_THREADS: expected a whole number of threads >= 1, got 'many'\n"
    )
