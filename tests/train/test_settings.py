"""TrainSettings validation: each bad value raises ConfigError naming its field."""

import pytest

from medpeft.config.tools import from_dict
from medpeft.errors import ConfigError
from medpeft.train import TrainSettings


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("optimizer", "lion"),
        ("lr", 0.0),
        ("min_lr", -1.0),
        ("momentum", 1.5),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("schedule", "step"),
        ("label_smoothing", 1.0),
        ("grad_accum_steps", 0),
        ("amp_dtype", "fp8"),
        ("max_grad_norm", -1.0),
        ("monitor_mode", "best"),
        ("patience", 0),
        ("log_every", 0),
        ("device", "gpu9"),
        ("warmup", -1.0),
        ("epochs", "ten"),
        ("activation_checkpointing", "sometimes"),
        ("activation_checkpointing", 1),
    ],
)
def test_bad_value_names_field(field, value):
    with pytest.raises(ConfigError, match=f"train.{field}:"):
        TrainSettings(**{field: value})


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="min_lr"):
        TrainSettings(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        TrainSettings(warmup=1.0, warmup_fraction=0.02)


def test_loads_from_config_mapping():
    settings = from_dict(TrainSettings, {"optimizer": "adamw", "betas": [0.9, 0.98], "lr": "5e-3",
                                         "warmup_fraction": 0.02, "schedule": "linear"}, "train")
    assert settings.betas == (0.9, 0.98) and settings.lr == 5e-3
