"""A preset name and the model's checkpoint as its authors publish it are all a user needs:
``medpeft train`` -> ``medpeft report`` -> ``medpeft serve`` (RETFound: a ``.pth`` holding
``{'model': encoder + MAE decoder}``), without any architecture argument from the model card
(the tiny sizes below only shrink the published architecture for the test)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import timm
import torch

from medpeft.cli import main
from tests.serve.conftest import Server, png_bytes

from .conftest import CPU

TINY = "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"
IMAGENET_MEAN = [0.485, 0.456, 0.406]


@pytest.fixture(scope="module")
def retfound_pth(tmp_path_factory):
    """RETFound's MAE checkpoint layout, written by torch from timm's own (tiny) ViT-L/16."""
    torch.manual_seed(3)
    native = timm.create_model("vit_large_patch16_224", num_classes=0, img_size=32, patch_size=8,
                               global_pool="avg", embed_dim=32, depth=2, num_heads=2)
    encoder = {k: v for k, v in native.state_dict().items() if not k.startswith("fc_norm.")}
    decoder = {"norm.weight": torch.randn(32), "norm.bias": torch.randn(32), "mask_token": torch.randn(1, 1, 32),
               "decoder_embed.weight": torch.randn(16, 32), "decoder_pred.weight": torch.randn(192, 16)}
    path = tmp_path_factory.mktemp("weights") / "RETFound_mae_natureCFP.pth"
    torch.save({"model": {**encoder, **decoder}, "epoch": 799}, path)
    return path


def test_a_preset_name_and_its_native_checkpoint_train_report_and_serve(retfound_pth, image_manifest, tmp_path):
    run = tmp_path / "fundus"
    argv = ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv", f"data.manifest={image_manifest}",
            "model.backbone=retfound", f"model.weights={retfound_pth}", "model.img_size=32", TINY,
            "train.epochs=1", "data.batch_size=16", *CPU, "--quiet"]
    assert main(argv) == 0
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["backbone"] == "retfound"
    assert adapter["preprocessing"]["mean"] == IMAGENET_MEAN and adapter["preprocessing"]["size"] == 32
    assert adapter["backbone_sha256"] == hashlib.sha256(retfound_pth.read_bytes()).hexdigest()

    assert main(["report", str(run)]) == 0
    assert "retfound" in (run / "report" / "index.html").read_text()

    server = Server(run, "--no-auth")
    try:
        tasks = httpx.get(f"{server.url}/tasks").json()
        response = httpx.post(f"{server.url}/predict", data={"task": "fundus"},
                              files={"image": ("eye.png", png_bytes(1), "image/png")}, timeout=60)
    finally:
        server.stop()
    assert [task["name"] for task in tasks["tasks"]] == ["fundus"] and tasks["skipped"] == {}
    assert response.status_code == 200, response.text
    probabilities = response.json()["probabilities"]
    assert len(probabilities) == 2 and sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert "Traceback" not in "".join(server.log)
