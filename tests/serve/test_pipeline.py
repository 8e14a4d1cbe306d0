"""The serving pipeline: uploads decoded in the decode pool (one torch thread each, off the event
loop), batches formed from what arrives during a forward or by the deadline, one forward thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from medpeft.bank import AdapterBank
from medpeft.serve import ServeSettings, create_app
from medpeft.serve.batcher import MicroBatcher
from tests.bank.conftest import TASKS
from tests.serve.conftest import png_bytes


def test_samples_arriving_during_a_forward_make_up_the_next_batch():
    """No waiting at all (max_wait 0): the batch grows from what queued while the forward ran."""
    waiting = 5
    batches: list[list[str]] = []
    batcher: MicroBatcher

    def predict(tasks, inputs):
        if not batches:  # the first forward lasts until the others are queued
            while batcher.depth < waiting:
                threading.Event().wait(0.005)
        batches.append(list(tasks))
        return [x["x"] for x in inputs]

    async def scenario() -> list[float]:
        nonlocal batcher
        batcher = MicroBatcher(predict, max_batch=16, max_wait_s=0.0, queue_size=100)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit("tb", {"x": torch.tensor(0.0)}))
            await asyncio.sleep(0.05)  # the worker took it: the forward is running
            tasks = ("tb", "blood")
            rest = [batcher.submit(tasks[i % 2], {"x": torch.tensor(float(i))}) for i in range(1, 6)]
            return [float(r) for r in await asyncio.gather(first, *rest)]
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert batches == [["tb"], ["blood", "tb", "blood", "tb", "blood"]]


def test_the_deadline_flushes_a_batch_that_is_not_full():
    """A sample on its way that never comes holds a batch for ``max_wait_s``, not longer."""
    batches: list[int] = []

    def predict(tasks, inputs):
        batches.append(len(tasks))
        return [x["x"] for x in inputs]

    async def scenario() -> list:
        batcher = MicroBatcher(predict, max_batch=64, max_wait_s=0.05, queue_size=100)
        batcher.start()
        try:
            with batcher.arriving():  # e.g. an upload whose decoding fails
                first = await asyncio.wait_for(asyncio.gather(
                    *(batcher.submit("tb", {"x": torch.tensor(float(i))}) for i in range(3))), timeout=30)
                second = await asyncio.wait_for(batcher.submit("tb", {"x": torch.tensor(3.0)}), timeout=30)
            return [*first, second]
        finally:
            await batcher.stop()

    assert [float(r) for r in asyncio.run(scenario())] == [0.0, 1.0, 2.0, 3.0]
    assert batches == [3, 1]  # each answered without 61 or 63 more samples


def test_a_batch_waits_only_for_samples_on_their_way():
    """With nothing being decoded a lone sample runs at once, not after ``max_wait_s`` (an hour)."""
    seen: list[int] = []

    async def scenario() -> float:
        batcher = MicroBatcher(lambda tasks, inputs: [x["x"] for x in inputs], 8, 3600.0, 100,
                               on_batch=lambda size, _: seen.append(size))
        batcher.start()
        try:
            return float(await asyncio.wait_for(batcher.submit("tb", {"x": torch.tensor(7.0)}), timeout=30))
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == 7.0 and seen == [1]


class Watched:
    """The real bank, recording the thread (name, torch threads) of each preprocess and predict."""

    def __init__(self, bank: AdapterBank) -> None:
        self.bank = bank
        self.seen: dict[str, set[tuple[str, int]]] = {"preprocess": set(), "predict": set()}

    def __getattr__(self, name: str):
        return getattr(self.bank, name)

    def _note(self, what: str) -> None:
        self.seen[what].add((threading.current_thread().name.rsplit("_", 1)[0], torch.get_num_threads()))

    def preprocess(self, *args, **kwargs):
        self._note("preprocess")
        return self.bank.preprocess(*args, **kwargs)

    def predict(self, names, inputs):
        self._note("predict")
        return self.bank.predict(names, inputs)


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_uploads_decode_in_the_pool_on_one_torch_thread_and_forwards_in_one_thread(
    adapter_dir, two_torch_threads
):
    bank = Watched(AdapterBank.from_directory(adapter_dir))
    app = create_app(bank, ServeSettings(max_batch=4, max_wait_ms=20, max_decodes=3), adapter_dir)
    tasks = list(TASKS)
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        def ask(i: int):
            return client.post("/predict", data={"task": tasks[i % 3]},
                               files={"image": ("x.png", png_bytes(i), "image/png")})

        answers = list(pool.map(ask, range(12)))
    assert [a.status_code for a in answers] == [200] * 12
    assert bank.seen["preprocess"] == {("medpeft-decode", 1)}  # not the event loop's thread
    assert bank.seen["predict"] == {("medpeft-predict", 2)}  # torch's setting at create_app


def test_an_unreadable_upload_fails_alone_among_concurrent_good_ones(adapter_dir):
    app = create_app(AdapterBank.from_directory(adapter_dir), ServeSettings(max_batch=8, max_wait_ms=50))
    bodies = [png_bytes(i) if i != 3 else b"\x89PNG\r\n\x1a\n broken" for i in range(8)]
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: client.post(
            "/predict", data={"task": "tb"}, files={"image": ("x.png", bodies[i], "image/png")}), range(8)))
    assert [a.status_code for a in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    assert "modality 'image'" in answers[3].json()["detail"]
