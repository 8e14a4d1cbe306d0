"""The extension point: a method defined here trains through ``medpeft train`` without touching src/.

A scale-and-shift method (in the spirit of SSF, Lian et al., NeurIPS 2022): a learned
per-channel scale (init 1) and shift (init 0) after the MLP of chosen blocks. A
settings dataclass, an ``attach``, a trainable marker and one ``register`` call.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.methods import Method, register, unregister

TINY = ["model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
        "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        "data.batch_size=16", "data.num_workers=0", "train.amp=false", "train.device=cpu",
        "train.epochs=1"]


@dataclass
class ScaleShiftSettings:
    """Blocks whose MLP output is scaled and shifted (None: all)."""

    blocks: Sequence[int] | None = None


class ScaleShiftMLP(nn.Module):
    def __init__(self, base: nn.Module, dim: int) -> None:
        super().__init__()
        self.base = base
        self.ssf_scale = nn.Parameter(torch.ones(dim))
        self.ssf_shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.ssf_scale + self.ssf_shift


class ScaleShift(Method):
    name = "ssf"
    settings_type = ScaleShiftSettings
    markers = (".ssf_",)

    def attach(self, model: nn.Module, settings: ScaleShiftSettings, adapter_name: str = "default") -> None:
        blocks = range(len(model.blocks)) if settings.blocks is None else settings.blocks
        for i in blocks:
            model.blocks[i].mlp = ScaleShiftMLP(model.blocks[i].mlp, model.embed_dim)


@pytest.fixture
def ssf():
    register(ScaleShift())
    yield
    unregister("ssf")


def test_a_method_registered_here_trains_evaluates_and_predicts(tmp_path, ssf, capsys):
    data = make_synthetic_dataset(tmp_path / "data", ("normal", "lesion"), n_per_class=12, img_size=32)
    run = tmp_path / "run"
    argv = ["train", "melo_shenzhen", f"output_dir={run}", "data.source=csv", f"data.manifest={data}",
            "method=ssf", "ssf.blocks=[1]", *TINY, "--quiet"]
    assert main(argv) == 0
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["method"] == "ssf" and config["settings"] == {"blocks": [1]}
    keys = set(load_file(str(run / "adapter" / "adapter_model.safetensors")))
    assert keys == {"blocks.1.mlp.ssf_scale", "blocks.1.mlp.ssf_shift", "head.weight", "head.bias"}
    trained = load_file(str(run / "adapter" / "adapter_model.safetensors"))["blocks.1.mlp.ssf_scale"]
    assert not torch.equal(trained, torch.ones_like(trained))
    assert main(["eval", str(run)]) == 0
    images = sorted((data.parent / "images").glob("*.png"))[:2]
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run / "adapter"), *map(str, images), "--output", str(out), "--quiet"]) == 0
    with open(out) as f:
        assert len(list(csv.DictReader(f))) == 2
    assert main(["train", "melo_shenzhen", f"output_dir={tmp_path / 'x'}", "method=ssf",
                 "ssf.blokcs=[0]"]) == 2
    assert "did you mean 'blocks'?" in capsys.readouterr().err


def test_unknown_method_suggests_the_registered_one(tmp_path, capsys):
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path}", "method=lorra"]
    assert main(argv) == 2
    assert "did you mean 'lora'?" in capsys.readouterr().err


def test_settings_section_of_an_unregistered_method_is_rejected(tmp_path, capsys):
    argv = ["train", "melo_shenzhen", f"output_dir={tmp_path}", "ssf.blocks=[0]"]
    assert main(argv) == 2
    assert "unknown key(s) ['ssf']" in capsys.readouterr().err
