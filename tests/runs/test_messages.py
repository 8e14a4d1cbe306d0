"""User-caused stops and surprises: one clear line (exit 2, or 130 on Ctrl-C), never a traceback.

Each case below once ended with a traceback or, worse, a silent wrong result.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import medpeft.train.checkpoint as checkpoint
import medpeft.train.trainer as trainer
from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset

from .conftest import one_line


@pytest.fixture
def manifest(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "data", ("normal", "lesion"), n_per_class=12, img_size=32)


def test_a_label_typo_is_flagged_with_the_class_counts(tmp_path, manifest, image_argv, capsys):
    rows = manifest.read_text().splitlines()
    rows[1] = rows[1].replace(",normal,", ",nromal,").replace(",lesion,", ",nromal,")
    manifest.write_text("\n".join(rows) + "\n")
    argv = image_argv(tmp_path / "run", "train.epochs=1")
    argv[argv.index(next(a for a in argv if a.startswith("data.manifest=")))] = f"data.manifest={manifest}"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "multiclass labels: lesion" in err and "nromal 1" in err
    assert "warning: label 'nromal' has only 1 sample(s); a typo in the labels?" in err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.rank=0", "lora.rank"),
        ("lora.rank=-2", "lora.rank"),
        ("lora.alpha=-1", "lora.alpha"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("model.img_size=-32", "model.img_size"),
        ("model.backbone=resnet50", "model.backbone: 'resnet50' is a ResNet"),
        ("train.monitor=aucroc", "did you mean 'auroc'?"),
        ("lora.rnk=3", "did you mean 'rank'?"),
        ("lora.rank=33", "lora.rank: 33 is larger than the layer blocks.0.attn.qkv (32 inputs, 32 adapted outputs)"),
        ("train.device=cuda:99", "train.device: 'cuda:99' is not a device of this machine; valid: auto, cpu"),
    ],
)
def test_bad_values_are_refused_before_anything_runs(tmp_path, image_argv, capsys, override, key):
    run = tmp_path / "run"
    assert main(image_argv(run, override)) == 2
    assert key in one_line(capsys.readouterr().err)
    assert not (run / "metrics.csv").exists()


def test_an_unreadable_image_in_a_loader_worker_is_one_line(tmp_path, manifest, image_argv, capsys):
    broken = sorted((manifest.parent / "images").glob("*.png"))
    for number, path in enumerate(broken):
        path.write_bytes(f"not a png at all ({number})".encode())  # not byte-identical: no leak
    argv = image_argv(tmp_path / "run", "train.epochs=1", "data.num_workers=2", "data.check_images=none")
    argv[argv.index(next(a for a in argv if a.startswith("data.manifest=")))] = f"data.manifest={manifest}"
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "cannot read" in line and ".png" in line and "Original Traceback" not in line


def test_unreadable_images_are_all_reported_before_training(tmp_path, manifest, image_argv, capsys):
    images = sorted((manifest.parent / "images").glob("*.png"))
    for path in images[:2]:
        path.write_bytes(b"\x89PNG truncated")
    run = tmp_path / "run"
    argv = image_argv(run, "train.epochs=1", "data.check_images=all")
    argv[argv.index(next(a for a in argv if a.startswith("data.manifest=")))] = f"data.manifest={manifest}"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 unreadable image(s)" in err and images[0].name in err and images[1].name in err
    assert "Traceback" not in err and not (run / "metrics.csv").exists()


def test_a_latin_1_manifest_is_named(tmp_path, image_argv, capsys):
    manifest = tmp_path / "labels.csv"
    manifest.write_bytes("image,label\nradiograf\xeda.png,normal\n".encode("latin-1"))
    argv = image_argv(tmp_path / "run")
    argv[argv.index(next(a for a in argv if a.startswith("data.manifest=")))] = f"data.manifest={manifest}"
    assert main(argv) == 2
    assert "labels.csv: not UTF-8 text" in one_line(capsys.readouterr().err)


def test_disk_full_while_saving_is_one_line(tmp_path, image_argv, capsys, monkeypatch):
    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write", full)
    assert main(image_argv(tmp_path / "run", "train.epochs=1")) == 2
    line = one_line(capsys.readouterr().err)
    assert "checkpoint.pt: No space left on device" in line or "No space left on device" in line


def test_ctrl_c_is_exit_130_and_says_how_to_resume(tmp_path, image_argv, capsys, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_optimizer_step", interrupt)
    assert main(image_argv(tmp_path / "run", "train.epochs=1")) == 130
    assert "interrupted" in one_line(capsys.readouterr().err)


def test_a_diverged_loss_stops_naming_the_batch(tmp_path, image_argv, capsys, monkeypatch):
    def nan_loss(task, label_smoothing=0.0):
        return lambda logits, targets: logits.sum() * torch.tensor(float("nan"))

    monkeypatch.setattr(trainer, "build_loss", nan_loss)
    run = tmp_path / "run"
    assert main(image_argv(run, "train.epochs=1")) == 2
    line = one_line(capsys.readouterr().err)
    assert "the loss is nan at epoch 0, batch 0 (samples " in line and "line " in line
    assert "lower train.lr" in line
    assert not (run / "adapter").exists()


def test_predict_rejects_a_nan_npy_image(tmp_path, train_image, capsys):
    run = train_image(tmp_path / "run", "train.epochs=1")
    image = tmp_path / "scan.npy"
    np.save(image, np.full((32, 32), np.nan))
    assert main(["predict", str(run / "adapter"), str(image)]) == 1  # the sample is an error row
    assert "scan.npy: 1024 of 1024 pixels are NaN or infinite" in one_line(capsys.readouterr().err)
    shutil.rmtree(run)


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_an_unknown_device_is_one_line_listing_the_valid_ones(image_run, image_manifest, command, capsys):
    image = next((image_manifest.parent / "images").glob("*.png"))
    argv = ["predict", str(image_run / "adapter"), str(image)] if command == "predict" else ["serve", str(image_run)]
    assert main([*argv, "--device", "bogus"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"medpeft {command}: error: --device: 'bogus' is not a device of this machine; "
                           "valid: auto, cpu")


@pytest.mark.parametrize("size", [33, 64])
def test_an_edited_preprocessing_size_is_one_line_naming_the_field(image_run, image_manifest, tmp_path, capsys, size):
    adapter = shutil.copytree(image_run / "adapter", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["preprocessing"]["size"] = size  # the model is built at img_size 32
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    image = next((image_manifest.parent / "images").glob("*.png"))
    assert main(["predict", str(adapter), str(image), "--quiet"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"medpeft predict: error: {adapter / 'adapter_config.json'}: preprocessing.size {size} does not fit "
        "the model: VisionTransformer (timm) takes 32 px images only (the img_size it was built at)"
    )


def test_an_mae_checkpoint_as_model_weights_trains_and_names_what_it_leaves_out(tmp_path, train_image, image_argv, capsys):
    from medpeft.backbones import build_vit

    encoder = build_vit("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_pred.weight": torch.zeros(192, 16)}
    torch.save({"model": {**state, **decoder}}, tmp_path / "mae.pth")
    run = train_image(tmp_path / "run", "train.epochs=1", f"model.weights={tmp_path / 'mae.pth'}")
    assert (f"{tmp_path / 'mae.pth'}: left out 2 tensor(s) that are not part of the encoder: decoder_pred.* (1), "
            "mask_token (1)") in capsys.readouterr().err
    assert (run / "adapter" / "adapter_config.json").is_file()

    torch.save({"model": {**state, "projector.weight": torch.zeros(8, 32)}}, tmp_path / "odd.pth")
    assert main(image_argv(tmp_path / "odd", "train.epochs=1", f"model.weights={tmp_path / 'odd.pth'}")) == 2
    assert one_line(capsys.readouterr().err) == (
        f"medpeft train: error: {tmp_path / 'odd.pth'} does not match the backbone: 1 of its tensors is not in the "
        "model (projector.weight). Is it a checkpoint of this architecture and size (model.backbone, model.kind, "
        "model.kwargs)?"
    )
