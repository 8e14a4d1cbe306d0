"""Adapters record the sha256 of their backbone weights; loading onto other weights is refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from medpeft.adapters_io.config import CONFIG_NAME, read_adapter_config
from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.api import load_adapter as api_load_adapter
from medpeft.cli import main
from medpeft.errors import ConfigError, WeightsError
from medpeft.model import build_model
from tests.methods.conftest import _tiny_vit
from tests.runs.conftest import one_line

LABELS = ["normal", "tb", "other"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_backbone(path, seed: int) -> None:
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=seed).state_dict().items()}, str(path))


@pytest.fixture
def adapter(tmp_path, tiny_spec, randomize_lora, backbone_file):
    """An adapter folder trained on ``backbone_file``."""
    spec = tiny_spec(len(LABELS))
    model = build_model(spec, weights=backbone_file).eval()
    randomize_lora(model)
    return save_adapter(model, tmp_path / "tb", spec, LABELS, "multiclass", backbone_weights=backbone_file)


def refusal(folder, weights, recorded: str) -> str:
    """The start of the message refusing ``weights`` (regex)."""
    return (
        f"{folder} was trained on other backbone weights: {weights} has sha256 {sha256(weights)}, "
        f"the adapter records sha256 {recorded}. Pass the checkpoint it was trained on with --weights, "
        "or --allow-other-weights"
    )


def test_the_adapter_records_the_sha256_of_its_backbone_file(adapter, backbone_file) -> None:
    config = read_adapter_config(adapter)
    assert config.backbone_weights == str(backbone_file.resolve())
    assert config.backbone_sha256 == sha256(backbone_file) and config.backbone_hub is None


def test_a_replaced_weights_file_is_refused_naming_it_and_both_hashes(adapter, backbone_file) -> None:
    recorded = sha256(backbone_file)
    write_backbone(backbone_file, seed=5)  # same architecture and path, other weights
    with pytest.raises(WeightsError) as error:
        load_adapter(adapter)
    assert str(error.value).startswith(refusal(adapter, backbone_file, recorded))
    with pytest.raises(WeightsError, match="was trained on other backbone weights"):
        api_load_adapter(adapter)


def test_other_weights_given_explicitly_are_refused_too(adapter, backbone_file, tmp_path) -> None:
    other = tmp_path / "other.safetensors"
    write_backbone(other, seed=5)
    with pytest.raises(WeightsError) as error:
        load_adapter(adapter, weights=other)
    assert str(error.value).startswith(refusal(adapter, other, sha256(backbone_file)))
    copy = tmp_path / "copy.safetensors"
    shutil.copy(backbone_file, copy)  # the same bytes elsewhere: fine
    load_adapter(adapter, weights=copy)


def test_the_override_loads_with_a_warning(adapter, backbone_file, images) -> None:
    before, _ = load_adapter(adapter)
    write_backbone(backbone_file, seed=5)
    with pytest.warns(UserWarning, match=r"tb runs on other backbone weights than it was trained on \(.*"
                      r"backbone.safetensors has sha256 [0-9a-f]{64}, the adapter records sha256 "
                      r"[0-9a-f]{64}\); its outputs may be wrong"):
        after, _ = load_adapter(adapter, allow_other_weights=True)
    with torch.no_grad():
        assert not torch.allclose(before.eval()(images), after.eval()(images))  # the weights do differ


def test_an_adapter_recording_no_hash_loads_as_before(adapter, backbone_file) -> None:
    config_file = adapter / CONFIG_NAME
    data = json.loads(config_file.read_text())
    del data["backbone_sha256"], data["backbone_hub"]  # as an older medpeft wrote it
    config_file.write_text(json.dumps(data))
    write_backbone(backbone_file, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(adapter)


def test_a_malformed_recorded_hash_names_the_field(adapter) -> None:
    config_file = adapter / CONFIG_NAME
    data = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**data, "backbone_sha256": "abc"}))
    with pytest.raises(ConfigError, match=r"adapter_config.json: backbone_sha256: expected 64 hex digits, got 'abc'"):
        read_adapter_config(adapter)


def test_cli_predict_refuses_in_one_line_and_the_flag_warns(adapter, backbone_file, tmp_path, capsys,
                                                            write_image) -> None:
    image = tmp_path / "x.png"
    write_image(image, (10, 200, 30))
    recorded = sha256(backbone_file)
    write_backbone(backbone_file, seed=5)
    assert main(["predict", str(adapter), str(image), "--quiet"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"medpeft predict: error: {refusal(adapter, backbone_file, recorded)}")
    with pytest.warns(UserWarning, match="runs on other backbone weights than it was trained on"):
        assert main(["predict", str(adapter), str(image), "--quiet", "--allow-other-weights"]) == 0
    assert str(image) in capsys.readouterr().out


def test_cli_export_refuses_other_weights(adapter, backbone_file, tmp_path, capsys) -> None:
    write_backbone(backbone_file, seed=5)
    for option in (["--merged", str(tmp_path / "merged")], ["--output", str(tmp_path / "peft")]):
        assert main(["export", str(adapter), *option]) == 2
        assert "was trained on other backbone weights" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "peft").exists()
    with pytest.warns(UserWarning, match="runs on other backbone weights"):
        assert main(["export", str(adapter), "--merged", str(tmp_path / "merged"), "--allow-other-weights"]) == 0


def test_unidentifiable_weights_warn_that_they_are_not_checked(adapter) -> None:
    config_file = adapter / CONFIG_NAME
    data = json.loads(config_file.read_text())
    hub = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    config_file.write_text(json.dumps({**data, "backbone_sha256": None, "backbone_hub": hub}))
    with pytest.warns(UserWarning, match=f"tb: the backbone weights loaded now cannot be compared with those "
                      f"the adapter records \\(hub repo {hub}\\); they are not checked"):
        load_adapter(adapter)
