"""A real ``medpeft serve`` process on loopback over three tiny tasks, and PNG inputs.

The adapter directory is the bank tests' three tasks (``tb``, ``blood``, ``chest``:
different ranks, targets, heads and task types) on one local backbone checkpoint.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.bank.conftest import TASKS, write_task
from tests.methods.conftest import _tiny_vit

TOKEN = "s3cret-token"
STARTUP_S = 120  # imports alone take seconds on a busy 2-core machine


def png_bytes(seed: int, size: int = 40) -> bytes:
    """A random RGB PNG (resized to the tasks' 32 px by their preprocessing)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="package")
def adapter_dir(tmp_path_factory) -> Path:
    """``adapters/{tb,blood,chest}`` sharing ``backbone.safetensors`` (outside the directory)."""
    root = tmp_path_factory.mktemp("serve")
    weights = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=123).state_dict().items()}, str(weights))
    for seed, name in enumerate(TASKS, start=1):
        write_task(root / "adapters", name, weights, seed)
    return root / "adapters"


class Server:
    """A ``medpeft serve`` subprocess; its port is read from uvicorn's start-up line."""

    def __init__(self, directory: Path, *options: str, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "medpeft.cli", "serve", str(directory), "--port", "0",
                "--device", "cpu", *options]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        self.log: list[str] = []
        self.port: int | None = None
        self._started = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._started.wait(STARTUP_S) or self.port is None:
            self.stop()
            raise RuntimeError("medpeft serve did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_log(self) -> None:
        """Collect the output (so the pipe never fills up); note the port when uvicorn names it."""
        for line in self.process.stdout:
            self.log.append(line)
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self._started.set()
        self._started.set()  # the process ended

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


MAX_PIXELS = 250_000  # the test server's --max-pixels


@pytest.fixture(scope="package")
def server(adapter_dir) -> Iterator[Server]:
    """``medpeft serve`` with a token, micro-batches of up to 8 within 50 ms, a 1 MiB upload limit,
    images of at most `MAX_PIXELS` pixels, two decodes at once.

    After the tests it must stop cleanly, with no traceback in its log.
    """
    running = Server(adapter_dir, "--max-batch", "8", "--max-wait-ms", "50", "--max-upload-mb", "1",
                     "--max-pixels", str(MAX_PIXELS), "--max-decodes", "2", env={"MEDPEFT_TOKEN": TOKEN})
    yield running
    running.stop()
    log = "".join(running.log)
    assert "Traceback" not in log, log
    assert "Application shutdown complete" in log, log[-2000:]


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    """An HTTP client of the server that sends its token."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c
