"""sha256 of files, remembered by (path, size, mtime): large checkpoints are read once."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from medpeft import hashing
from medpeft.hashing import HASH_CACHE_ENV, file_sha256, hash_cache_file


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every file `stream_sha256` reads (the cache's misses), in order."""
    seen: list[str] = []
    real = hashing.stream_sha256

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(hashing, "stream_sha256", counting)
    return seen


def test_a_file_is_hashed_once_until_it_changes(tmp_path, reads) -> None:
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(b"weights v1" * 1000)
    first = file_sha256(path)
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == first and file_sha256(tmp_path / "." / path.name) == first
    assert reads == [str(path)]  # the second and third calls hit the cache
    path.write_bytes(b"weights v2" * 1000)  # same size, new contents and mtime
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != first
    assert len(reads) == 2


def test_the_cache_lives_where_the_environment_says(tmp_path, monkeypatch, reads) -> None:
    cache = tmp_path / "elsewhere" / "hashes.json"
    monkeypatch.setenv(HASH_CACHE_ENV, str(cache))
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    digest = file_sha256(path)
    assert hash_cache_file() == cache
    assert json.loads(cache.read_text())[str(path.resolve())]["sha256"] == digest
    monkeypatch.delenv(HASH_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hash_cache_file() == tmp_path / "xdg" / "medpeft" / "sha256.json"


def test_a_damaged_or_unwritable_cache_only_costs_a_rehash(tmp_path, monkeypatch, reads) -> None:
    cache = tmp_path / "hashes.json"
    cache.write_text("{not json")
    monkeypatch.setenv(HASH_CACHE_ENV, str(cache))
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    monkeypatch.setenv(HASH_CACHE_ENV, str(path / "not-a-folder" / "hashes.json"))
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    assert len(reads) == 2
