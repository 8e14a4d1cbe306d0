"""Micro-batching across tasks: concurrent samples share one forward pass.

Requests put their preprocessed sample on a bounded asyncio queue and await a
future. One worker task takes the first waiting sample, keeps collecting until
the batch holds ``max_batch`` samples or ``max_wait`` has passed since that first
one (no wait when no other sample is on its way, see `MicroBatcher.arriving`), and
runs a single ``predict(tasks, inputs)`` for the whole mix of tasks in its one
forward thread, so the event loop keeps accepting requests meanwhile; samples
arriving during a forward make up the next batch, which thus grows with the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from medpeft.errors import MedpeftError
from medpeft.threads import set_thread_threads

Inputs = Mapping[str, torch.Tensor]
PredictFn = Callable[[Sequence[str], Sequence[Inputs]], list[torch.Tensor]]
BatchHook = Callable[[int, float], None]


class Overloaded(RuntimeError):
    """The queue is full (or the server is stopping): the request is refused, not queued."""


@dataclass
class _Sample:
    task: str
    inputs: Inputs
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects samples of any tasks into batches and predicts each batch in one call.

    Args:
        predict: ``predict(tasks, inputs) -> probabilities per sample`` (blocking; runs
            in a thread of its own, one batch at a time).
        max_batch: Largest batch.
        max_wait_s: How long a batch waits for more samples after its first.
        queue_size: Samples allowed to wait; `submit` refuses more.
        on_batch: Called with the size and duration of every finished batch.
        threads: Torch intra-op threads of the forward thread (None: torch's setting).
    """

    def __init__(
        self,
        predict: PredictFn,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: BatchHook | None = None,
        threads: int | None = None,
    ) -> None:
        self._predict = predict
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Sample] = asyncio.Queue(maxsize=queue_size)
        self._on_batch = on_batch
        self._arriving = 0  # samples being prepared (decoded) for `submit`
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Samples waiting for a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker (inside the running event loop)."""
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="medpeft-predict", initializer=self._set_up_thread
        )
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="medpeft-batcher")

    def _set_up_thread(self) -> None:
        if self._threads is not None:
            set_thread_threads(self._threads)

    async def stop(self) -> None:
        """Stop the worker; samples still waiting fail with `Overloaded`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            sample = self._queue.get_nowait()
            if not sample.future.done():
                sample.future.set_exception(Overloaded("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a sample on its way (its upload being decoded): a batch waits for it, up to
        ``max_wait_s``; with none on the way a batch runs without waiting."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def submit(self, task: str, inputs: Inputs) -> torch.Tensor:
        """The probabilities of one sample, once its batch has run.

        Raises:
            Overloaded: the queue is full.
        """
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Sample(task, inputs, future))
        except asyncio.QueueFull:
            raise Overloaded(
                f"the prediction queue is full ({self._queue.maxsize} samples waiting); retry shortly"
            ) from None
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            await self._predict_batch([s for s in batch if not s.future.done()])

    async def _collect(self) -> list[_Sample]:
        """The next batch: the first waiting sample and whatever joins within ``max_wait_s``
        (no wait when no sample is on its way)."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._arriving:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _predict_batch(self, batch: list[_Sample]) -> None:
        """Run one batch and hand each sample its result (or the error)."""
        if not batch:
            return
        start = time.perf_counter()
        try:
            outputs = await self._call([s.task for s in batch], [s.inputs for s in batch])
        except Exception as error:
            if isinstance(error, MedpeftError) and len(batch) > 1:
                # e.g. a task unloaded meanwhile: one bad sample must not fail the others
                for sample in batch:
                    await self._predict_batch([sample])
            else:
                _settle(batch, error=error)
            return
        _settle(batch, outputs=outputs)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - start)

    async def _call(self, tasks: list[str], inputs: list[Inputs]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._predict, tasks, inputs)


def _settle(
    batch: list[_Sample], outputs: Sequence[torch.Tensor] | None = None, error: BaseException | None = None
) -> None:
    """Resolve the futures still awaited (a client may have gone away)."""
    for i, sample in enumerate(batch):
        if sample.future.done():
            continue
        if error is not None:
            sample.future.set_exception(error)
        else:
            sample.future.set_result(outputs[i])
