"""LoRA-ViT file names: ``_lora_{r}_{alpha}`` and the public ``{backbone}_x_y_{r}_{alpha}_{C}`` fields."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medpeft.adapters_io.lora_vit import NameFields, lora_vit_settings, name_fields
from medpeft.errors import WeightsError


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("melo_lora_4_8.safetensors", NameFields(rank=4, alpha=8.0)),
        ("base_lora_shenzhen_4_4_2.safetensors", NameFields("vit_base_patch16_224", 4, 4.0, 2)),
        ("large_melo_nih_8_16_14_best.safetensors", NameFields("vit_large_patch16_224", 8, 16.0, 14)),
        ("custom_a_b_2_1.5_3.safetensors", NameFields(None, 2, 1.5, 3)),
        ("tb.safetensors", NameFields()),
        ("base_a_b_4_4.safetensors", NameFields()),
    ],
)
def test_name_fields(name, fields):
    assert name_fields(name) == fields


def _file(tmp_path, name: str, rank: int = 4, classes: int = 2):
    state = {f"w_{ab}_{i:03d}": torch.zeros(*(rank, 8) if ab == "a" else (8, rank)) for ab in "ab" for i in range(2)}
    state[f"fc_8in_{classes}out"] = torch.zeros(classes, 8)
    path = tmp_path / name
    save_file(state, str(path))
    return path, state


def test_settings_take_alpha_from_the_public_name(tmp_path):
    path, state = _file(tmp_path, "base_lora_tb_4_8_2.safetensors")
    settings = lora_vit_settings(path, state)
    assert (settings.rank, settings.alpha, settings.targets) == (4, 8.0, ("q", "v"))


@pytest.mark.parametrize(
    ("name", "culprit"),
    [("base_lora_tb_8_8_2.safetensors", "rank 8"), ("base_lora_tb_4_4_3.safetensors", "3 classes")],
)
def test_a_name_that_contradicts_the_tensors_is_refused(tmp_path, name, culprit):
    path, state = _file(tmp_path, name)
    with pytest.raises(WeightsError, match=culprit):
        lora_vit_settings(path, state)
