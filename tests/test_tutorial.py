"""docs/tutorial.md: every command runs, in order, on a tiny generated folder.

The train command gets a tiny random backbone instead of its ``model.weights=`` file;
``medpeft serve`` runs as a real server on a free port and the ``curl`` line is sent
with httpx.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from medpeft.cli import main
from tests.runs.conftest import TINY_IMAGE

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def commands() -> list[list[str]]:
    """The command lines of the tutorial's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.+?)\n```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


def make_folder(root: Path) -> None:
    """``root/{train,test}/{normal,tb}/*.png``: dark images are normal, bright ones tb."""
    rng = np.random.default_rng(0)
    for split, n in {"train": 12, "test": 4}.items():
        for value, label in zip((40, 200), ("normal", "tb")):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(value, 30, (32, 32, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_tutorial_command_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "data")
    lines = commands()
    assert [line[:2] for line in lines] == [
        ["medpeft", "init"], ["medpeft", "train"], ["medpeft", "report"], ["medpeft", "predict"],
        ["medpeft", "serve"], ["curl", "-F"],
    ]
    server = None
    try:
        for line in lines:
            if line[:2] == ["medpeft", "serve"]:
                server, url = start_server(line[2:], tmp_path)
            elif line[0] == "curl":
                answer = send_curl(line, url)
                assert answer.status_code == 200, answer.text
                assert set(answer.json()["probabilities"]) == {"normal", "tb"}
            else:
                args = line[1:]
                if args[0] == "train":
                    args = [a for a in args if not a.startswith("model.weights=")]
                    args += [*TINY_IMAGE, "train.epochs=1", "--quiet"]
                assert main(args) == 0, line
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert (tmp_path / "runs" / "my_task" / "report" / "index.html").is_file()
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and rows[0].split(",")[-3:] == ["prediction", "status", "error"]
    assert json.loads((tmp_path / "runs" / "my_task" / "test_metrics.json").read_text())["positive_class"] == "tb"


def start_server(args: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """``medpeft serve`` with the tutorial's arguments on a free port; waits for /health."""
    port = free_port()
    args = [str(port) if a == "8000" else a for a in args]
    env = {k: v for k, v in os.environ.items() if k != "MEDPEFT_TOKEN"}
    server = subprocess.Popen([sys.executable, "-m", "medpeft", "serve", *args], cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
        assert server.poll() is None, "the server exited"
    raise AssertionError("the server did not answer /health")


def send_curl(line: list[str], url: str) -> httpx.Response:
    """The tutorial's ``curl -F key=value -F key=@file URL`` as an httpx multipart POST."""
    fields, files = {}, {}
    for flag, value in zip(line[1:-1:2], line[2:-1:2]):
        assert flag == "-F"
        key, _, content = value.partition("=")
        if content.startswith("@"):
            files[key] = (Path(content[1:]).name, Path(content[1:]).read_bytes())
        else:
            fields[key] = content
    return httpx.post(line[-1].replace("http://127.0.0.1:8000", url), data=fields, files=files, timeout=60)
