"""MicroBatcher: batches mix tasks, close at max_batch or max_wait, refuse when full, isolate bad samples."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from medpeft.bank import UnknownTask
from medpeft.serve.batcher import MicroBatcher, Overloaded


class Recorder:
    """A predict function that echoes each sample's ``x`` and records every batch's tasks."""

    def __init__(self, fail_on: str | None = None, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, tasks, inputs):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append(list(tasks))
        if self.fail_on in tasks:
            raise UnknownTask(f"unknown task {self.fail_on!r}")
        return [x["x"] * 2 for x in inputs]


async def _submit_all(batcher: MicroBatcher, tasks: list[str]) -> list:
    batcher.start()
    try:
        jobs = [batcher.submit(t, {"x": torch.tensor(float(i))}) for i, t in enumerate(tasks)]
        return await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await batcher.stop()


def test_batches_mix_tasks_and_close_when_full():
    predict = Recorder()
    tasks = ["tb", "blood", "chest"] * 3 + ["tb"]
    results = asyncio.run(_submit_all(MicroBatcher(predict, 4, 0.2, 100), tasks))
    assert [float(r) for r in results] == [2.0 * i for i in range(len(tasks))]
    assert [len(b) for b in predict.batches] == [4, 4, 2]
    assert predict.batches[0] == ["tb", "blood", "chest", "tb"]  # one forward, several tasks


def test_batch_closes_after_max_wait():
    predict = Recorder()
    start = time.perf_counter()
    (result,) = asyncio.run(_submit_all(MicroBatcher(predict, 64, 0.05, 100), ["tb"]))
    assert float(result) == 0.0 and predict.batches == [["tb"]]
    assert time.perf_counter() - start < 5  # did not wait for 63 more samples


def test_full_queue_refuses_new_samples():
    gate = threading.Event()
    predict = Recorder(gate=gate)

    async def scenario():
        batcher = MicroBatcher(predict, 1, 0.0, 1)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("tb", {"x": torch.tensor(1.0)}))
        while not predict.entered.is_set():  # the worker took it and is predicting
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(batcher.submit("tb", {"x": torch.tensor(2.0)}))
        await asyncio.sleep(0)
        assert batcher.depth == 1
        with pytest.raises(Overloaded, match=r"queue is full \(1 samples waiting\)"):
            await batcher.submit("tb", {"x": torch.tensor(3.0)})
        gate.set()
        results = await asyncio.gather(first, second)
        await batcher.stop()
        return results

    assert [float(r) for r in asyncio.run(scenario())] == [2.0, 4.0]


def test_a_failing_sample_fails_alone():
    predict = Recorder(fail_on="gone")
    results = asyncio.run(_submit_all(MicroBatcher(predict, 8, 0.2, 100), ["tb", "gone", "blood"]))
    assert float(results[0]) == 0.0 and float(results[2]) == 4.0
    assert isinstance(results[1], UnknownTask)
    assert predict.batches[0] == ["tb", "gone", "blood"] and ["tb"] in predict.batches[1:]
