"""ViLT backbone: weights (file, folder, hub), tokenizer, text position table, config length."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import ViltModel

from medpeft.backbones.vilt import build_tokenizer, build_vilt, resize_text_positions
from medpeft.cli import builtin_configs
from medpeft.config import load_config
from medpeft.errors import ConfigError, WeightsError
from medpeft.fusion.vilt import ViltClassifier

MIXED = [[1, 1], [1, 0], [0, 1]]


def test_weights_from_file_folder_and_missing_hub(vilt_config, tmp_path: Path):
    torch.manual_seed(1)
    source = ViltModel(vilt_config)
    state = {f"vilt.{k}": v.contiguous() for k, v in source.state_dict().items()}
    state["classifier.weight"] = torch.zeros(2, 32)  # a task head the loader drops
    save_file(state, str(tmp_path / "vilt.safetensors"))
    source.save_pretrained(tmp_path / "folder")
    from_file = build_vilt(config=vilt_config, weights=tmp_path / "vilt.safetensors")
    from_folder = build_vilt(weights=tmp_path / "folder")
    for loaded in (from_file, from_folder):
        for key, value in source.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value)
    wider = copy.deepcopy(vilt_config)
    wider.hidden_size = 48
    with pytest.raises(WeightsError, match="shapes do not match the model.*pass the matching config"):
        build_vilt(config=wider, weights=tmp_path / "vilt.safetensors")
    with pytest.raises(WeightsError, match="Offline"):
        build_vilt(str(tmp_path / "absent"), pretrained=True)


def test_tokenizer_from_vocab_file_and_clear_error(tokenizer, tmp_path: Path):
    ids = tokenizer([""], padding="max_length", max_length=4)["input_ids"][0]
    assert ids == [2, 3, 0, 0]  # missing text: [CLS] [SEP] + padding
    with pytest.raises(WeightsError, match="vocab.txt"):
        build_tokenizer(tmp_path / "absent")


def test_resize_text_positions_interpolates_the_table(vilt_config, vilt_batch, vilt_reference, long_text_batch):
    torch.manual_seed(0)
    vilt = ViltModel(vilt_config).eval()
    old = vilt.embeddings.text_embeddings.position_embeddings.weight.detach().clone()
    assert old.shape[0] == 40
    resize_text_positions(vilt, 80)
    text = vilt.embeddings.text_embeddings
    new = text.position_embeddings.weight.detach()
    assert new.shape == (80, 32) and vilt.config.max_position_embeddings == 80
    torch.testing.assert_close(new[0], old[0])
    torch.testing.assert_close(new[-1], old[-1])
    # 40 -> 80, align_corners=False: row i samples old position (i + 0.5) / 2 - 0.5
    torch.testing.assert_close(new[1], 0.75 * old[0] + 0.25 * old[1])
    torch.testing.assert_close(new[41], 0.75 * old[20] + 0.25 * old[21])  # position 20.25
    torch.testing.assert_close(new[42], 0.25 * old[20] + 0.75 * old[21])  # position 20.75
    assert text.position_ids.tolist() == [list(range(80))]
    assert text.token_type_ids.shape == (1, 80) and not text.token_type_ids.any()
    assert not any("position_ids" in k or "token_type_ids" in k for k in vilt.state_dict())
    assert vilt_config.max_position_embeddings == 40  # the caller's config is left alone

    model = ViltClassifier(vilt, num_classes=3).eval()
    batch = long_text_batch(80)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(batch), vilt_reference(vilt, batch), atol=1e-5, rtol=1e-4
        )
        assert model(batch).shape == (3, 3)


def test_resize_to_the_same_length_is_a_no_op(vilt_config, vilt_batch):
    torch.manual_seed(0)
    model = ViltClassifier(ViltModel(vilt_config), num_classes=3).eval()
    table = model.vilt.embeddings.text_embeddings.position_embeddings
    batch = vilt_batch(MIXED)
    with torch.no_grad():
        before = model(batch)
        resize_text_positions(model.vilt, 40)
        after = model(batch)
    assert model.vilt.embeddings.text_embeddings.position_embeddings is table
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="max_text_len"):
        resize_text_positions(model.vilt, 0)


def test_iu_xray_config_uses_longer_text():
    config = load_config(builtin_configs()["mora_iu_xray"])
    assert config.model.max_text_len == 128
    with pytest.raises(ConfigError, match="model.max_text_len"):
        load_config(builtin_configs()["mora_iu_xray"], ["model.max_text_len=0"])
