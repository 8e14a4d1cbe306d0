"""``medpeft serve`` end to end over HTTP: predictions, tasks, errors, limits, auth, metrics, page."""

from __future__ import annotations

import http.client
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel.testing
import pydicom.data
import pytest
from prometheus_client.parser import text_string_to_metric_families

from medpeft.runs.predict import predict_files
from tests.bank.conftest import TASKS
from tests.serve.conftest import TOKEN, Server, png_bytes


def predict(client: httpx.Client, task: str, files: dict[str, bytes]) -> httpx.Response:
    """POST a multipart prediction request (still multipart without files)."""
    if not files:
        body = f'--b\r\nContent-Disposition: form-data; name="task"\r\n\r\n{task}\r\n--b--\r\n'
        return client.post("/predict", content=body.encode(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    return client.post("/predict", data={"task": task},
                       files={m: (f"{m}.png", data, "image/png") for m, data in files.items()})


def metric_samples(client: httpx.Client) -> dict[str, list]:
    text = client.get("/metrics").text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_concurrent_mixed_tasks_equal_offline_predictions(client, adapter_dir, tmp_path):
    tasks = [list(TASKS)[i % len(TASKS)] for i in range(12)]
    images = [png_bytes(seed) for seed in range(len(tasks))]
    before = sum(s.value for s in metric_samples(client)["medpeft_batch_size"] if s.name.endswith("_count"))

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda i: predict(client, tasks[i], {"image": images[i]}), range(len(tasks))))

    for i, image in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(image)
    offline = {  # each task's adapter alone on its own model, read from files
        task: predict_files(adapter_dir / task, [str(tmp_path / f"{i}.png") for i, t in enumerate(tasks) if t == task])
        for task in TASKS
    }
    rows = {task: iter(range(len(tasks))) for task in TASKS}
    for task, response in zip(tasks, responses):
        assert response.status_code == 200, response.text
        expected, row = offline[task], next(rows[task])
        body = response.json()
        assert body["task"] == task and body["labels"] == expected.labels == TASKS[task][1]
        assert body["prediction"] == expected.decision(expected.scores[row])
        assert body["missing"] == []
        served = [body["probabilities"][label] for label in body["labels"]]
        assert served == pytest.approx(expected.scores[row], abs=1e-5)
    batches = sum(s.value for s in metric_samples(client)["medpeft_batch_size"] if s.name.endswith("_count"))
    assert batches - before < len(tasks)  # concurrent requests shared forward passes


@pytest.mark.parametrize("path", [
    Path(pydicom.data.get_testdata_file("CT_small.dcm")),
    Path(nibabel.testing.data_path) / "anatomical.nii",
    Path(nibabel.testing.data_path) / "example4d.nii.gz",
], ids=["dicom", "nifti", "nifti-gz"])
def test_medical_files_equal_offline_predictions(client, adapter_dir, path):
    response = client.post("/predict", data={"task": "blood"}, files={"image": ("upload", path.read_bytes())})
    assert response.status_code == 200, response.text
    offline = predict_files(adapter_dir / "blood", [str(path)])
    served = response.json()["probabilities"]
    assert [served[label] for label in offline.labels] == pytest.approx(offline.scores[0], abs=1e-5)


def test_lists_tasks_and_reports_health(client, server):
    tasks = {t["name"]: t for t in client.get("/tasks").json()["tasks"]}
    assert set(TASKS) <= set(tasks)
    for name, (_, labels, kind) in TASKS.items():
        assert tasks[name]["labels"] == labels and tasks[name]["task"] == kind
        assert tasks[name]["modalities"] == ["image"] and tasks[name]["method"] == "lora"
    health = httpx.get(f"{server.url}/health").json()  # no token needed
    assert health["status"] == "ok" and health["tasks"] == len(tasks)


def test_loads_and_unloads_tasks_at_run_time(client, adapter_dir):
    assert client.delete("/tasks/blood").json()["loaded"] is False
    assert client.get("/tasks/blood").json()["loaded"] is False
    assert client.post("/tasks/blood").json()["loaded"] is True

    shutil.copytree(adapter_dir / "tb", adapter_dir / "tb-copy")  # a task added after start
    added = client.post("/tasks/tb-copy")
    assert added.status_code == 200 and added.json()["loaded"] is True
    image = {"image": png_bytes(99)}
    copy, original = predict(client, "tb-copy", image).json(), predict(client, "tb", image).json()
    assert copy["probabilities"] == pytest.approx(original["probabilities"], abs=1e-6)
    assert client.post("/tasks/not-there").status_code == 404


@pytest.mark.parametrize(
    ("task", "files", "status", "message"),
    [
        ("tbb", {"image": png_bytes(0)}, 404, "unknown task 'tbb'; did you mean 'tb'"),
        ("tb", {"image": b"not an image at all"}, 422, "modality 'image': unrecognised image data"),
        ("tb", {"image": png_bytes(0)[:60]}, 422, "modality 'image': cannot read image"),
        ("tb", {"ct": png_bytes(0)}, 422, "reads modalities ['image'], not ['ct']"),
        ("tb", {}, 422, "no input"),
    ],
)
def test_user_errors_answer_json_naming_the_culprit(client, task, files, status, message):
    response = predict(client, task, files)
    assert response.status_code == status
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (dict(files={"image": ("a.png", png_bytes(0))}), 422, "form field 'task' (the task name) is missing"),
        (dict(files={"task": ("t.txt", b"tb"), "image": ("a.png", png_bytes(0))}), 422, "'task' must be text"),
        (dict(data={"task": "tb", "image": "text"}), 415, "send multipart/form-data"),
        (dict(json={"task": "tb"}), 415, "not 'application/json'"),
        (dict(content=b"--x\r\nContent-Disposition: form-data\r\n\r\ntb\r\n--x--\r\n",
              headers={"content-type": "multipart/form-data; boundary=x"}), 400, '"name" must be provided'),
        (dict(content=b"x", headers={"content-type": "multipart/form-data"}), 400, "Missing boundary"),
        (dict(files=[("image", ("a.png", png_bytes(0))), ("image", ("b.png", png_bytes(1)))],
              data={"task": "tb"}), 422, "uploaded twice"),
    ],
)
def test_malformed_requests_answer_4xx(client, kwargs, status, message):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_oversized_uploads_get_413(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(2 * 2**20)  # 2 MiB against the 1 MiB limit
    declared = predict(client, "tb", {"image": big})
    assert declared.status_code == 413 and "over the server's limit of 1.0 MiB" in declared.json()["detail"]

    def chunks():  # no Content-Length: counted while read
        yield b"--b\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\ntb\r\n"
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(8):
            yield bytes(2**18)
        yield b"\r\n--b--\r\n"

    streamed = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "--max-upload-mb" in streamed.json()["detail"]
    assert predict(client, "tb", {"image": png_bytes(0)}).status_code == 200


def raw(server, method: str, target: str) -> int:
    """Status of a request whose target is sent exactly as written (no dot-segment cleanup)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(method, target, headers={"Authorization": f"Bearer {TOKEN}"})
    status = connection.getresponse().status
    connection.close()
    return status


@pytest.fixture
def decoy(adapter_dir):
    """A valid task folder beside (outside) the adapter directory."""
    folder = adapter_dir.parent / "decoy"
    if not folder.exists():
        shutil.copytree(adapter_dir / "tb", folder)
    return folder


@pytest.mark.parametrize("name", ["..%2Fdecoy", "..%2F..%2Fdecoy", "%2E%2E", "..", "%2e%2e%2fdecoy", "decoy%00"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_task_paths_cannot_leave_the_adapter_directory(server, client, decoy, method, name):
    assert raw(server, method, f"/tasks/{name}") in (400, 404, 405)
    assert "decoy" not in {t["name"] for t in client.get("/tasks").json()["tasks"]}


@pytest.mark.parametrize("task", ["../decoy", "..", "decoy/../tb", "DECOY_ABSOLUTE"])
def test_predict_task_names_cannot_leave_the_adapter_directory(client, decoy, task):
    task = str(decoy) if task == "DECOY_ABSOLUTE" else task
    response = predict(client, task, {"image": png_bytes(0)})
    assert response.status_code == 400 and "task name" in response.json()["detail"]
    assert "decoy" not in {t["name"] for t in client.get("/tasks").json()["tasks"]}


def test_api_needs_the_bearer_token(server):
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        for method, path in [("GET", "/tasks"), ("GET", "/metrics"), ("POST", "/predict"), ("DELETE", "/tasks/tb")]:
            response = anonymous.request(method, path)
            assert response.status_code == 401 and "missing bearer token" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.get("/tasks", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong bearer token"
        assert anonymous.get("/health").status_code == 200 and anonymous.get("/").status_code == 200


def test_no_auth_serves_an_open_api_even_with_an_empty_token_variable(adapter_dir):
    running = Server(adapter_dir, "--no-auth", env={"MEDPEFT_TOKEN": ""})
    try:
        assert httpx.get(f"{running.url}/tasks", timeout=60).status_code == 200
        assert httpx.get(f"{running.url}/openapi.json", timeout=60).status_code == 200
    finally:
        running.stop()


def test_metrics_are_prometheus_text(client):
    predict(client, "tb", {"image": png_bytes(3)})
    client.get("/tasks/nope")
    samples = metric_samples(client)
    assert {"medpeft_queue_depth", "medpeft_batch_size", "medpeft_request_duration_seconds",
            "medpeft_requests", "medpeft_adapters_loaded"} <= set(samples)
    statuses = {(s.labels["route"], s.labels["status"]) for s in samples["medpeft_requests"]}
    assert ("/predict", "200") in statuses and ("/tasks/{name}", "404") in statuses


def test_serves_the_web_page_and_the_openapi_spec(server, client):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="predict-form"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    script = httpx.get(f"{server.url}/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/tasks", "/tasks/{name}", "/health", "/metrics"} <= set(spec["paths"])
    assert set(spec["paths"]["/tasks/{name}"]) == {"get", "post", "delete"}
    assert "openapi.json" in client.get("/docs").text and "openapi.json" in client.get("/redoc").text


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_the_spec_and_its_pages_need_the_token_too(server, path):
    response = httpx.get(f"{server.url}{path}")
    assert response.status_code == 401 and "missing bearer token" in response.json()["detail"]
