"""The FastAPI app of ``medpeft serve``: many task adapters on one frozen backbone over HTTP.

:func:`create_app` wires an :class:`~medpeft.bank.AdapterBank` to the endpoints of
:mod:`medpeft.serve.routes`, a pool of ``max_decodes`` threads that decode and
preprocess uploads off the event loop (one torch thread each), a
:class:`~medpeft.serve.batcher.MicroBatcher` that merges concurrent requests of any
tasks into one forward pass in its own thread (torch's thread setting), Prometheus
metrics, a request-body limit and optional bearer-token
auth (the OpenAPI spec and its pages included). Error bodies never name server-side
paths. The app keeps no state of its own beyond the bank's adapter cache, so
replicas behind a load balancer need only the same adapter directory.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from medpeft import __version__
from medpeft.bank import AdapterBank, BankGroup, UnknownTask
from medpeft.errors import DataError, MedpeftError
from medpeft.serve.batcher import MicroBatcher, Overloaded
from medpeft.serve.metrics import ServeMetrics
from medpeft.serve.middleware import BodyLimit, RequestMetrics, UploadTooLarge
from medpeft.serve.routes import DOCS_ASSETS, STATIC, ServerState, api, docs_assets, public
from medpeft.serve.settings import ServeSettings
from medpeft.threads import set_thread_threads

RETRY_AFTER_S = "1"
DECODE_THREADS = 1  # torch threads of each decode thread: the forward thread keeps the cores' worth


def create_app(
    bank: AdapterBank | BankGroup, settings: ServeSettings | None = None, directory: str | Path | None = None
) -> FastAPI:
    """The HTTP app serving every task of ``bank``.

    Args:
        bank: The task adapters and their shared backbone.
        settings: Batching, queue, upload limit and token.
        directory: The bank's adapter directory: ``POST /tasks/{name}`` registers a
            folder of that name added to it after start.
    """
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    batcher = MicroBatcher(
        bank.predict, settings.max_batch, settings.max_wait_ms / 1000,
        settings.queue_size, on_batch=metrics.observe_batch, threads=torch.get_num_threads(),
    )
    decoder = ThreadPoolExecutor(max_workers=settings.max_decodes, thread_name_prefix="medpeft-decode",
                                 initializer=set_thread_threads, initargs=(DECODE_THREADS,))
    metrics.watch(lambda: batcher.depth, lambda: sum(t.loaded for t in bank.tasks()))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoder.shutdown(wait=True)

    app = FastAPI(
        title="medpeft", version=__version__, lifespan=lifespan,
        description="Diagnosis task adapters on one frozen vision backbone. Predict with "
        "`POST /predict` (multipart: a `task` field and one image file per modality).",
        openapi_url=None, docs_url=None, redoc_url=None,  # served by `api`: behind the token
    )
    folder = Path(directory) if directory is not None else None
    skipped = {name: hide_paths(reason, folder) for name, reason in bank.skipped.items()}
    app.state.medpeft = ServerState(bank, settings, batcher, metrics, folder, decoder, skipped=skipped)
    app.include_router(public)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    assets = docs_assets()
    if assets is not None:
        app.mount(f"/{DOCS_ASSETS}", StaticFiles(directory=assets), name=DOCS_ASSETS)
    _add_error_handlers(app, folder)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts refused uploads too
    return app


# user errors -> status, the first matching class wins: unknown task; unreadable image or
# wrong modality (the bank's BadInput and WrongModality are DataErrors); bad name or request
STATUS = ((UnknownTask, 404), (DataError, 422), (MedpeftError, 400))


def _add_error_handlers(app: FastAPI, directory: Path | None) -> None:
    """User errors answer ``{"detail": message}`` with a 4xx status; a full queue answers 503;
    anything else 500, its details left to the server log."""

    async def user_error(_: Request, error: Exception) -> JSONResponse:
        status = next(code for cls, code in STATUS if isinstance(error, cls))
        return JSONResponse({"detail": hide_paths(str(error), directory)}, status_code=status)

    async def overloaded(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    async def too_large(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=413)

    async def internal(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)

    app.add_exception_handler(MedpeftError, user_error)
    app.add_exception_handler(Overloaded, overloaded)
    app.add_exception_handler(UploadTooLarge, too_large)
    app.add_exception_handler(Exception, internal)


INTERNAL_ERROR = "internal server error (the server log has the details)"
_START = r"(?<![\w.~:/\\-])"  # a path starts a word, not inside one
_FOLDERS = re.compile(_START + r"(?:[A-Za-z]:|~)?[/\\](?:[^\s'\"/\\]+[/\\])+")  # root to last separator


def hide_paths(text: str, directory: Path | None = None) -> str:
    """``text`` without server-side folders: paths under the adapter ``directory`` become
    relative to it, any other absolute path keeps its file name only."""
    if directory is not None:
        roots = dict.fromkeys(str(d).rstrip("/\\") for d in (directory.resolve(), directory.absolute(), directory))
        text = re.sub(_START + "(?:" + "|".join(map(re.escape, roots)) + r")[/\\]", "", text)
    return _FOLDERS.sub("", text)
