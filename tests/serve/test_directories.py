"""``medpeft serve`` on the folders a newcomer has: the demo's output, run folders, mixed methods;
the API pages offline."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medpeft.demo import run_demo
from tests.bank.conftest import write_method_task
from tests.serve.conftest import Server, png_bytes


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, adapter_dir) -> Path:
    """A shortened demo's output (pretrain, linear, lora, full runs) plus a MoRA task folder."""
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, epochs=1, progress=False, pretrain_epochs=1, samples_per_class=4, pretrain_samples=4)
    write_method_task(out, "mora", "mora", adapter_dir.parent / "backbone.safetensors", seed=5)
    return out


@pytest.fixture(scope="module")
def demo_server(demo_out) -> Iterator[Server]:
    running = Server(demo_out, "--no-auth")
    yield running
    running.stop()
    assert "Traceback" not in "".join(running.log)


def test_the_demo_output_serves_every_run_and_names_what_it_skips(demo_server, demo_out):
    listing = httpx.get(f"{demo_server.url}/tasks").json()
    # LoRA and the linear probe share the backbone; each fully fine-tuned model has its own
    assert [task["name"] for task in listing["tasks"]] == ["linear", "lora", "full", "pretrain"]
    assert [task["method"] for task in listing["tasks"]] == ["linear", "lora", "full", "full"]
    skipped = listing["skipped"]
    assert list(skipped) == ["mora"]
    assert skipped["mora"].startswith("mora: method 'mora' cannot share a backbone in a mixed batch")
    assert str(demo_out) not in str(skipped)  # no server paths in answers
    log = "".join(demo_server.log)
    assert f"skipped task mora: {demo_out}/mora: method 'mora' cannot share a backbone" in log
    assert "serving 4 tasks (linear, lora, full, pretrain)" in log and "skipped 1: mora" in log


@pytest.mark.parametrize("task", ["linear", "lora", "full", "pretrain"])
def test_each_served_run_of_the_demo_predicts(demo_server, task):
    response = httpx.post(f"{demo_server.url}/predict", data={"task": task},
                          files={"image": ("x.png", png_bytes(3), "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["task"] == task and len(response.json()["probabilities"]) > 1


def test_a_run_folder_is_served_as_one_task_named_after_it(demo_out, tmp_path):
    run = shutil.copytree(demo_out / "lora", tmp_path / "my-run", ignore=shutil.ignore_patterns("report"))
    running = Server(run, "--no-auth")
    try:
        tasks = httpx.get(f"{running.url}/tasks").json()
    finally:
        running.stop()
    assert [task["name"] for task in tasks["tasks"]] == ["my-run"] and tasks["skipped"] == {}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_load_their_files_from_the_server_itself(client, page):
    html = client.get(page).text
    assert "http://" not in html and "https://" not in html  # no CDN, no web fonts: works offline
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    urls += re.findall(r"""url: ['"]([^'"]+)['"]""", html)
    assert any(url.endswith(".js") for url in urls), html
    for url in urls:
        assert client.get(f"/{url}").status_code == 200, url
