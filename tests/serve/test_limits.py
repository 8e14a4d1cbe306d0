"""Hostile uploads: decompression bombs, floods of them, and error bodies that never name server paths."""

from __future__ import annotations

import io
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from medpeft.bank import AdapterBank
from medpeft.serve import ServeSettings, create_app
from medpeft.serve.app import INTERNAL_ERROR, hide_paths
from tests.data import bombs
from tests.serve.conftest import MAX_PIXELS, png_bytes

FLOOD = 8


def post_image(client: httpx.Client, data: bytes, task: str = "tb") -> httpx.Response:
    return client.post("/predict", data={"task": task}, files={"image": ("scan", data)})


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux ``VmHWM``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_of(600, 500), "modality 'image': upload.png: image of 600 x 500 = 300,000 pixels is over the limit "
                           f"of {MAX_PIXELS:,} pixels (data.max_pixels, medpeft serve --max-pixels); refused before decoding"),
        (bombs.png_declaring(20000, 20000), "upload.png: image of 400,000,000 pixels is over the limit"),
        (bombs.npy_declaring((30000, 30000)), "upload.npy: image of 30000 x 30000 = 900,000,000 pixels is over"),
        (bombs.nifti_declaring((256, 256, 4000)), "upload.nii: declares an array of shape (256, 256, 4000)"),
    ],
    ids=["png-over-the-option", "png-bomb", "npy-header", "nifti-volume"],
)
def test_images_over_the_pixel_limit_get_422_naming_size_and_limit(client, data, message):
    response = post_image(client, data)
    assert response.status_code == 422 and message in response.json()["detail"]
    assert post_image(client, png_bytes(1)).status_code == 200


def test_a_flood_of_dicom_bombs_is_refused_in_bounded_memory_while_others_are_answered(server, client):
    bomb = bombs.deflated_dicom(4000, 4000)  # 31 kB inflating to 32 MB of pixels (128 MB as float64)
    before = peak_rss_mb(server.process.pid)
    with ThreadPoolExecutor(FLOOD + 1) as pool:
        flood = [pool.submit(post_image, client, bomb) for _ in range(FLOOD)]
        normal = pool.submit(post_image, client, png_bytes(2))
        assert normal.result().status_code == 200
        for refused in flood:
            response = refused.result()
            assert response.status_code == 422
            assert "upload.dcm: image of 4000 x 4000 = 16,000,000 pixels is over the limit" in response.json()["detail"]
    assert peak_rss_mb(server.process.pid) - before < 100  # nothing near 32 MB per bomb was inflated
    assert post_image(client, png_bytes(3)).status_code == 200


def test_a_body_over_the_limit_gets_413_and_the_next_request_is_answered(client):
    response = post_image(client, bombs.png_declaring(100, 100) + bytes(2 << 20))
    assert response.status_code == 413 and "--max-upload-mb" in response.json()["detail"]
    assert post_image(client, png_bytes(4)).status_code == 200


def test_error_bodies_name_no_server_paths(client, adapter_dir):
    corrupt = post_image(client, png_bytes(0)[:60])
    detail = corrupt.json()["detail"]
    assert corrupt.status_code == 422 and "cannot read image upload.png: " in detail and "/" not in detail

    broken = adapter_dir / "broken"
    broken.mkdir()
    try:
        (broken / "adapter_config.json").write_text("{not json")
        response = client.post("/tasks/broken")
        detail = response.json()["detail"]
        assert response.status_code == 400 and "broken/adapter_config.json" in detail
        assert str(adapter_dir) not in detail and str(adapter_dir.parent) not in detail
    finally:
        shutil.rmtree(broken)


def test_hide_paths_keeps_names_relative_to_the_adapter_directory(tmp_path):
    directory = tmp_path / "adapters"
    text = (f"{directory}/tb/adapter_config.json: bad; {tmp_path}/weights/backbone.safetensors differs; "
            "send multipart/form-data, 1/2")
    assert hide_paths(text, directory) == (
        "tb/adapter_config.json: bad; backbone.safetensors differs; send multipart/form-data, 1/2"
    )


class FailingBank:
    """The real bank, whose ``predict`` fails with an error naming a server path."""

    def __init__(self, bank: AdapterBank) -> None:
        self.bank = bank

    def __getattr__(self, name: str):
        return getattr(self.bank, name)

    def predict(self, names, inputs):
        raise RuntimeError("cannot map /srv/medpeft/adapters/tb/adapter_model.safetensors")


def test_an_internal_error_answers_500_without_details(adapter_dir):
    app = create_app(FailingBank(AdapterBank.from_directory(adapter_dir)), ServeSettings(), adapter_dir)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/predict", data={"task": "tb"}, files={"image": ("a.png", png_bytes(0))})
    assert response.status_code == 500
    assert response.json() == {"detail": INTERNAL_ERROR} and "/srv" not in json.dumps(response.json())
