"""Server settings: validated with the option's name; the token comes from --token or MEDPEFT_TOKEN."""

from __future__ import annotations

import pytest

from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.serve.settings import TOKEN_ENV, ServeSettings, token_from


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("max_batch", 0, "--max-batch must be at least 1"), ("queue_size", 0, "--queue-size must be at least 1"),
     ("max_wait_ms", -1, "--max-wait-ms must not be negative"), ("token", " ", "--token is empty"),
     ("max_pixels", 0, "--max-pixels must be at least 1"), ("max_decodes", 0, "--max-decodes must be at least 1")],
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


@pytest.mark.parametrize("value", ["", "  "])
def test_a_token_variable_set_but_empty_is_refused_unless_no_auth(monkeypatch, value):
    monkeypatch.setenv(TOKEN_ENV, value)
    with pytest.raises(ConfigError, match=r"MEDPEFT_TOKEN is set but empty, so anyone could call the API.*--no-auth"):
        token_from(None)
    assert token_from(None, no_auth=True) is None
    with pytest.raises(ConfigError, match="--token and --no-auth contradict"):
        token_from("secret", no_auth=True)


def test_serve_refuses_to_start_with_an_empty_token_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "")
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medpeft serve: error: serve: MEDPEFT_TOKEN is set but empty") and err.count("\n") == 1
