"""``medpeft serve`` over LoRA tasks on a transformers DINOv2 backbone (a ``save_pretrained`` folder)."""

from __future__ import annotations

import httpx
import pytest
from fixtures.families import TASK_LABELS, family_backbone, write_family_task

from medpeft.runs.predict import predict_files
from tests.serve.conftest import Server, png_bytes


def test_serves_tasks_on_a_dinov2_backbone_as_predict_does(tmp_path):
    weights = family_backbone("dinov2", tmp_path / "backbone")
    for seed, task in enumerate(TASK_LABELS, start=1):
        write_family_task(tmp_path / "adapters", "dinov2", task, weights, seed)
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(5))
    server = Server(tmp_path / "adapters", "--no-auth")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for task, labels in TASK_LABELS.items():
                response = client.post("/predict", data={"task": task},
                                       files={"image": ("x.png", image.read_bytes(), "image/png")})
                assert response.status_code == 200, response.text
                offline = predict_files(tmp_path / "adapters" / task, [str(image)])
                body = response.json()
                assert body["labels"] == labels
                served = [body["probabilities"][label] for label in labels]
                assert served == pytest.approx(offline.scores[0], abs=1e-5)
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.log)
