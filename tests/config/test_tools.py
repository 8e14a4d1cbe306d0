"""medpeft.config.tools: typed dataclasses from YAML mappings, overrides, YAML files."""

from dataclasses import dataclass, field

import pytest

from medpeft.config.tools import apply_overrides, from_dict, read_yaml, to_dict
from medpeft.errors import ConfigError


@dataclass
class Inner:
    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ("q", "v")
    blocks: list[int] | None = None


@dataclass
class Outer:
    name: str = "run"
    inner: Inner = field(default_factory=Inner)


def test_nested_values_are_typed_and_defaults_kept():
    cfg = from_dict(Outer, {"inner": {"alpha": 8, "targets": ["q"], "blocks": [0, 1]}})
    assert cfg.inner.alpha == 8.0 and isinstance(cfg.inner.alpha, float)
    assert cfg.inner.targets == ("q",)
    assert cfg.inner.blocks == [0, 1]
    assert cfg.inner.rank == 4 and cfg.name == "run"


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match=r"config\.inner: unknown key\(s\) \['rnk'\]"):
        from_dict(Outer, {"inner": {"rnk": 3}})


def test_unknown_key_suggests_the_closest_field():
    with pytest.raises(ConfigError, match=r"\['rnk'\]; did you mean 'rank'\? \(expected some of"):
        from_dict(Outer, {"inner": {"rnk": 3}})


def test_wrong_type_names_its_path():
    with pytest.raises(ConfigError, match=r"config\.inner\.rank: expected int, got 'four'"):
        from_dict(Outer, {"inner": {"rank": "four"}})
    with pytest.raises(ConfigError, match=r"config\.inner\.rank"):
        from_dict(Outer, {"inner": {"rank": True}})


def test_scientific_notation_string_reads_as_float():
    assert from_dict(Inner, {"alpha": "1e-3"}).alpha == pytest.approx(1e-3)


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"inner": {"rank": 4}}, ["inner.rank=8", "inner.blocks=[0, 2]", "name=x"])
    assert data == {"inner": {"rank": 8, "blocks": [0, 2]}, "name": "x"}
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, ["inner.rank"])


def test_read_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        read_yaml(bad)


def test_to_dict_round_trips():
    cfg = from_dict(Outer, {"inner": {"targets": ["q", "k"]}})
    assert from_dict(Outer, to_dict(cfg)) == cfg
