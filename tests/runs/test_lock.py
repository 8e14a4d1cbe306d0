"""run.lock: one process per run folder; stale locks taken over, failed runs release theirs."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.runs.lock import LOCK, run_lock
from tests.runs.conftest import one_line


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_a_stale_lock_of_a_dead_process_is_taken_over_saying_so(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with caplog.at_level(logging.WARNING, logger="medpeft"), run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {pid}, which is no longer running" in caplog.text
    assert not (tmp_path / LOCK).exists()


def test_a_live_lock_is_refused_naming_its_process(tmp_path):
    write_lock(tmp_path, os.getppid())  # the process that started the tests: alive
    refused = pytest.raises(ConfigError, match=f"another run \\(process {os.getppid()}\\) is writing this folder")
    with refused, run_lock(tmp_path):
        pass
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getppid()  # not touched


def test_a_lock_is_released_when_the_body_fails(tmp_path):
    with pytest.raises(KeyboardInterrupt), run_lock(tmp_path):
        raise KeyboardInterrupt
    with run_lock(tmp_path):  # free again
        pass


def test_a_failed_run_releases_its_folder(tmp_path, capsys, image_argv):
    run = tmp_path / "run"
    write_lock(run, dead_pid())
    assert main(image_argv(run, f"data.manifest={tmp_path / 'absent.csv'}")) == 2
    err = capsys.readouterr().err
    assert "taking over the lock of process" in err
    assert one_line(err).endswith(f"manifest not found: {tmp_path / 'absent.csv'}")
    assert run.is_dir() and not (run / LOCK).exists()


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "other-host"}))
    refused = pytest.raises(ConfigError, match=f"locked by process 1 on host 'other-host'; .*delete {tmp_path / LOCK}")
    with refused, run_lock(tmp_path):
        pass
