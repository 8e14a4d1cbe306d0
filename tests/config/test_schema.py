"""The one RunConfig schema: every built-in recipe loads, bad keys are named."""

from __future__ import annotations

import pytest

from medpeft.cli import builtin_configs
from medpeft.config import RunConfig, load_config
from medpeft.data.missing import MissingSetting
from medpeft.errors import ConfigError
from medpeft.methods import LoraSettings, MoraSettings

MELO = {"melo_shenzhen", "melo_blood_cells", "melo_chestxray14", "melo_inbreast"}
MORA = {"mora_odir", "mora_iu_xray", "mora_synthetic"}


def test_builtin_configs_are_listed_with_how_to_run():
    names = builtin_configs()
    assert set(names) >= MELO | MORA
    for name, path in names.items():
        assert path.read_text().startswith(f"# How to run: medpeft train {name}")


@pytest.mark.parametrize("name", sorted(builtin_configs()))
def test_each_builtin_config_loads(name):
    config = load_config(builtin_configs()[name])
    assert isinstance(config, RunConfig)
    if name.startswith("mora_"):  # MoRA recipes (single- and multi-modality share the schema)
        mora = config.method_settings()
        assert config.method == "mora" and isinstance(mora, MoraSettings)
        assert config.settings["mora"] is mora and mora.rank == 4 and list(mora.blocks) == [0]
        assert config.missing.train == MissingSetting(0.7, "both")
        assert config.train.lr == 5e-3 and config.train.monitor == "f1_macro"
    elif name.startswith("ei_"):  # EI + MoR recipes
        assert config.method == "mor" and config.model.fusion == "early_intervention"
        assert config.model.img_size % 14 == 0 and config.data.balanced == "oversample"
        assert (config.train.schedule, config.train.monitor, config.train.patience) == ("cyclic", "map", 10)
    else:  # MeLo recipes
        lora = config.method_settings()
        assert isinstance(lora, LoraSettings) and config.method == "lora"
        assert lora.rank == 4 and lora.alpha == 4.0
        assert config.model.img_size in (224, 384)


def test_method_section_typo_suggests_the_key():
    with pytest.raises(ConfigError, match=r"lora: unknown key\(s\) \['rnk'\]; did you mean 'rank'\?"):
        load_config(builtin_configs()["melo_shenzhen"], ["lora.rnk=3"])


def test_method_settings_are_validated_with_their_key():
    with pytest.raises(ConfigError, match=r"lora\.rank: expected an integer >= 1, got 0"):
        load_config(builtin_configs()["melo_shenzhen"], ["lora.rank=0"])


def test_defaults_without_a_file_use_the_method_defaults():
    config = load_config(None, ["method=mora"])
    assert config.method == "mora" and config.method_settings() == MoraSettings()


def test_the_starter_config_for_own_data_asks_for_the_patient_column():
    path = builtin_configs()["own_data"]
    data_section = path.read_text().split("\ndata:\n")[1].split("\ntrain:\n")[0]
    assert "SEVERAL IMAGES PER PATIENT" in data_section and "group_col: null" in data_section
    config = load_config(path, ["data.group_col=patient"])
    assert (config.data.source, config.data.group_col, config.data.leakage) == ("csv", "patient", "error")
    assert config.data.positive_class is None


def test_name_sets_the_run_folder_unless_output_dir_is_given(tmp_path):
    assert load_config(None, ["name=foo"]).output_dir == "runs/foo"
    assert load_config(None, ["name=foo", "output_dir=elsewhere"]).output_dir == "elsewhere"
    named = tmp_path / "named.yaml"
    named.write_text("name: bar\n")
    assert load_config(named).output_dir == "runs/bar"
    both = tmp_path / "both.yaml"
    both.write_text("name: bar\noutput_dir: out/bar\n")
    assert load_config(both).output_dir == "out/bar"
    assert load_config(both, ["name=foo"]).output_dir == "runs/foo"  # the command line's name wins
