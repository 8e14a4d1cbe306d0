"""Check the web page of ``medpeft serve`` in headless Chromium and save a screenshot.

Usage: python scripts/check_web_page.py shot.png [--adapters DIR]

Starts the server (uvicorn on a free loopback port, with a bearer token) on
``DIR`` or on two tiny random LoRA tasks written to a temporary folder, opens the
page, enters the token, picks a task, uploads a PNG, clicks Predict and waits for
the probability bars. Exits 1 if the page shows an error, a browser console error,
or a bar count other than the task's label count. Needs playwright (the Python
package) and a Chromium binary (default ``/usr/bin/chromium``, or ``--chromium PATH``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from medpeft.adapters_io.folder import save_adapter
from medpeft.bank import AdapterBank, TaskInfo
from medpeft.methods import LoraSettings
from medpeft.model import ModelSpec, build_model
from medpeft.serve import ServeSettings, create_app

TOKEN = "page-check"
TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)
TASKS = {  # name: (labels, task type)
    "chest-xray": (["atelectasis", "effusion", "nodule", "pneumothorax"], "multilabel"),
    "blood-cells": (["neutrophil", "eosinophil", "lymphocyte", "monocyte"], "multiclass"),
}
PICK = "chest-xray"  # the task to predict with (else the first one)


def write_tiny_tasks(folder: Path) -> Path:
    """Two random LoRA tasks on one tiny random ViT (seed 0): meaningless but servable."""
    for seed, (name, (labels, task)) in enumerate(TASKS.items(), start=1):
        spec = ModelSpec("vit_tiny_patch16_224", len(labels), img_size=32, model_kwargs=dict(TINY),
                         settings=LoraSettings(rank=4))
        torch.manual_seed(0)
        model = build_model(spec)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator))
        save_adapter(model, folder / name, spec, labels, task, backbone_seed=0)
    return folder


@contextmanager
def running_server(bank: AdapterBank, adapters: Path) -> Iterator[str]:
    """The URL of ``medpeft serve`` on ``bank`` while the block runs."""
    app = create_app(bank, ServeSettings(token=TOKEN), adapters)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(30)


def check_page(url: str, task: TaskInfo, image: Path, out: Path, chromium: str) -> list[str]:
    """Drive the page through one prediction of ``task``, screenshot it; return the problems seen."""
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.goto(url)
            page.wait_for_selector("#error:not([hidden])")  # no token yet: the page asks for it
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.wait_for_selector(f"#task option[value='{task.name}']", state="attached")
            page.select_option("#task", task.name)
            page.set_input_files("#modalities input[type=file]", str(image))
            page.click("#predict")
            page.wait_for_selector("#bars .bar")
            bars = page.locator("#bars .bar").count()
            if bars != len(task.labels):
                problems.append(f"{bars} bars for the {len(task.labels)} labels of {task.name}")
            shown = (page.input_value("#task"), page.inner_text("#result-task"))
            if shown != (task.name, task.name):
                problems.append(f"picked {task.name}, page shows task {shown[0]} and result of {shown[1]}")
            if page.is_visible("#error"):
                problems.append(f"error shown: {page.inner_text('#error')}")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    # the 401 of the token-less first load is expected; any other console error is not
    return [p for p in problems if "401" not in p]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG screenshot to write")
    parser.add_argument("--adapters", type=Path, help="adapter directory (default: two tiny tasks)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = args.adapters or write_tiny_tasks(Path(tmp) / "adapters")
        image = Path(tmp) / "upload.png"
        pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image)
        bank = AdapterBank.from_directory(adapters)
        names = [t.name for t in bank.tasks()]
        task = bank.task(PICK if PICK in names else names[0])
        with running_server(bank, adapters) as url:
            problems = check_page(url, task, image, args.out, args.chromium)
    for problem in problems:
        print(f"web page: {problem}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
