"""A full prediction queue answers 503 over HTTP (uvicorn on loopback, a batch held open)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvicorn

from medpeft.bank import AdapterBank
from medpeft.serve import ServeSettings, create_app
from tests.serve.conftest import png_bytes


class HeldBank:
    """The real bank, whose ``predict`` waits until released (a slow batch)."""

    def __init__(self, bank: AdapterBank) -> None:
        self.bank = bank
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.bank, name)

    def predict(self, names, inputs):
        self.entered.set()
        assert self.release.wait(30)
        return self.bank.predict(names, inputs)


def test_full_queue_answers_503(adapter_dir):
    bank = HeldBank(AdapterBank.from_directory(adapter_dir))
    app = create_app(bank, ServeSettings(max_batch=1, max_wait_ms=0, queue_size=1), adapter_dir)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(2) as pool:
            def send():
                return client.post("/predict", data={"task": "tb"}, files={"image": ("a.png", png_bytes(0))})

            running = pool.submit(send)
            assert bank.entered.wait(30)  # the worker holds the first sample's batch
            waiting = pool.submit(send)
            deadline = time.monotonic() + 30
            while client.get("/health").json()["queue_depth"] < 1:  # the second sample waits
                assert time.monotonic() < deadline and not waiting.done()
                time.sleep(0.01)
            refused = send()
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "prediction queue is full" in refused.json()["detail"]
            bank.release.set()
            assert running.result().status_code == 200 and waiting.result().status_code == 200
    finally:
        bank.release.set()
        server.should_exit = True
        thread.join(30)
