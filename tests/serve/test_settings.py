"""Server settings: validated with the option's name; the token comes from --token or MEDPEFT_TOKEN."""

from __future__ import annotations

import pytest

from medpeft.errors import ConfigError
from medpeft.serve.settings import TOKEN_ENV, ServeSettings, token_from


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("max_batch", 0, "--max-batch must be at least 1"), ("queue_size", 0, "--queue-size must be at least 1"),
     ("max_wait_ms", -1, "--max-wait-ms must not be negative"), ("token", " ", "--token is empty")],
)
def test_bad_settings_name_the_option(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ServeSettings(**{field: value})


def test_token_comes_from_the_option_else_the_environment(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token_from(None) is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert token_from(None) == "from-env" and token_from("from-option") == "from-option"
    assert ServeSettings(max_upload_mb=1.5).max_upload_bytes == 1_572_864
