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


def test_the_demo_output_serves_its_lora_and_linear_runs_and_names_what_it_skips(demo_server, demo_out):
    listing = httpx.get(f"{demo_server.url}/tasks").json()
    assert [task["name"] for task in listing["tasks"]] == ["linear", "lora"]
    assert [task["method"] for task in listing["tasks"]] == ["linear", "lora"]
    skipped = listing["skipped"]
    assert sorted(skipped) == ["full", "mora", "pretrain"]
    assert skipped["full"].startswith("full/adapter: method 'full' trains the whole backbone")
    assert skipped["mora"].startswith("mora: method 'mora' cannot share a backbone in a mixed batch")
    assert str(demo_out) not in str(skipped)  # no server paths in answers
    log = "".join(demo_server.log)
    assert f"skipped task mora: {demo_out}/mora: method 'mora' cannot share a backbone" in log
    assert "serving 2 tasks (linear, lora)" in log and "skipped 3: full, mora, pretrain" in log


@pytest.mark.parametrize("task", ["linear", "lora"])
def test_each_served_run_of_the_demo_predicts(demo_server, task):
    response = httpx.post(f"{demo_server.url}/predict", data={"task": task},
                          files={"image": ("x.png", png_bytes(3), "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    assert abs(sum(response.json()["probabilities"].values()) - 1) < 1e-4


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
