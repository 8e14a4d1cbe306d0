"""Endpoints: predict, tasks (list, show, load, unload), health, metrics, the OpenAPI spec and
its pages, the web page."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile

from medpeft.adapters_io.config import CONFIG_NAME
from medpeft.bank import AdapterBank, BankGroup, TaskInfo, UnknownTask
from medpeft.bank.tasks import check_task_name
from medpeft.serve.batcher import Inputs, MicroBatcher
from medpeft.serve.metrics import CONTENT_TYPE, ServeMetrics
from medpeft.serve.schemas import (
    PREDICT_BODY,
    TASK_FIELD,
    Health,
    Prediction,
    Task,
    TaskList,
    error_responses,
)
from medpeft.serve.settings import ServeSettings

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "docs-assets"  # Swagger UI and ReDoc files, served from the installed fastapi-offline
MAX_PARTS = 32  # form fields + files of one prediction request


@dataclass
class ServerState:
    """Everything the endpoints share; the only state is the bank's adapter cache."""

    bank: AdapterBank | BankGroup
    settings: ServeSettings
    batcher: MicroBatcher
    metrics: ServeMetrics
    directory: Path | None  # the bank's adapter directory (new task folders are looked up there)
    decoder: ThreadPoolExecutor  # decodes and preprocesses uploads, --max-decodes at once
    discovery: threading.Lock = field(default_factory=threading.Lock)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it is not served (no server paths)


def server(request: Request) -> ServerState:
    return request.app.state.medpeft


Server = Annotated[ServerState, Depends(server)]
_bearer = HTTPBearer(auto_error=False, description="The server's --token (or MEDPEFT_TOKEN)")


def check_token(
    state: Server, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries the server's bearer token (when it has one)."""
    expected = state.settings.token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        detail = "wrong bearer token" if given else "missing bearer token (Authorization: Bearer TOKEN)"
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


api = APIRouter(dependencies=[Depends(check_token)], responses=error_responses(401))
public = APIRouter()


def as_task(info: TaskInfo) -> Task:
    return Task(**dataclasses.asdict(info))


@api.post("/predict", response_model=Prediction, openapi_extra=PREDICT_BODY,
          responses=error_responses(400, 404, 413, 415, 422, 503))
async def predict(request: Request, state: Server) -> Prediction:
    """Probabilities of one sample: a ``task`` field and one image file per modality."""
    with state.batcher.arriving():  # a batch forming meanwhile waits for it (up to --max-wait-ms)
        name, files = await read_upload(request)
        loop = asyncio.get_running_loop()
        info, inputs = await loop.run_in_executor(state.decoder, decode, state, name, files)
    scores = await state.batcher.submit(name, inputs)
    return Prediction.of(as_task(info), scores.tolist(), list(files))


def decode(state: ServerState, name: str, files: dict[str, bytes]) -> tuple[TaskInfo, Inputs]:
    """The task ``name`` and its preprocessed inputs (in a decode thread, off the event loop)."""
    info = find_task(state, name)
    return info, state.bank.preprocess(name, files, state.settings.max_pixels)


def find_task(state: ServerState, name: str) -> TaskInfo:
    """The bank's task ``name``, registering a folder of that name added to the directory since start.

    Replicas sharing the adapter directory thus all serve a task copied into it.
    """
    try:
        return state.bank.task(name)
    except UnknownTask:
        if state.directory is None or not (state.directory / check_task_name(name) / CONFIG_NAME).is_file():
            raise
    with state.discovery:  # two first requests for a new task register it once
        try:
            return state.bank.task(name)
        except UnknownTask:
            return state.bank.register(name, state.directory / name)


async def read_upload(request: Request) -> tuple[str, dict[str, bytes]]:
    """The task name and ``{modality: file bytes}`` of a multipart prediction request."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(
            415 if content_type else 400,
            f"send multipart/form-data with a {TASK_FIELD!r} field and one file per modality, "
            f"not {content_type or 'no content type'!r}",
        )
    task, files = None, {}
    async with request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS) as form:
        for key, value in form.multi_items():
            if key == TASK_FIELD:
                if not isinstance(value, str):
                    raise HTTPException(422, f"form field {TASK_FIELD!r} must be text, not a file")
                task = value
            elif not isinstance(value, UploadFile):
                raise HTTPException(422, f"form field {key!r} must be an image file (or name the task with {TASK_FIELD!r})")
            elif key in files:
                raise HTTPException(422, f"modality {key!r} uploaded twice; send one file per modality")
            else:
                data = await value.read()
                if data or value.filename:  # an empty file input of a browser form: modality missing
                    files[key] = data
    if task is None:
        raise HTTPException(422, f"form field {TASK_FIELD!r} (the task name) is missing")
    return task, files


@api.get("/tasks", response_model=TaskList)
def list_tasks(state: Server) -> TaskList:
    """Every task in the adapter directory, loaded or not, and those it skipped (with why)."""
    return TaskList(tasks=[as_task(info) for info in state.bank.tasks()], skipped=state.skipped)


@api.get("/tasks/{name}", response_model=Task, responses=error_responses(400, 404))
def show_task(name: str, state: Server) -> Task:
    """One task: its labels, modalities and whether it is loaded."""
    return as_task(find_task(state, name))


@api.post("/tasks/{name}", response_model=Task, responses=error_responses(400, 404))
def load_task(name: str, state: Server) -> Task:
    """Put a task adapter on the backbone now (a folder added to the directory since start included)."""
    find_task(state, name)
    state.bank.load(name)
    return as_task(state.bank.task(name))


@api.delete("/tasks/{name}", response_model=Task, responses=error_responses(400, 404))
def unload_task(name: str, state: Server) -> Task:
    """Take a task adapter off the backbone (it loads again on its next prediction)."""
    find_task(state, name)
    state.bank.unload(name)
    return as_task(state.bank.task(name))


@public.get("/health", response_model=Health)
def health(state: Server) -> Health:
    """Liveness and readiness (no token needed: for load balancers)."""
    tasks = state.bank.tasks()
    loaded = sum(info.loaded for info in tasks)
    return Health(status="ok", tasks=len(tasks), loaded=loaded, queue_depth=state.batcher.depth)


@api.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(state: Server) -> Response:
    """Prometheus metrics: queue depth, batch sizes, latencies, requests by status."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@api.get("/openapi.json", include_in_schema=False)
def openapi_spec(request: Request) -> JSONResponse:
    """The OpenAPI spec (with a token set, it needs the token like the API it describes)."""
    return JSONResponse(request.app.openapi())


def docs_assets() -> Path | None:
    """The folder of Swagger UI and ReDoc files fastapi-offline installs (None without it)."""
    spec = importlib.util.find_spec("fastapi_offline")
    folder = Path(spec.origin).parent / "static" if spec is not None and spec.origin else None
    return folder if folder is not None and folder.is_dir() else None


def _check_docs_assets() -> None:
    if docs_assets() is None:
        raise HTTPException(404, "the API pages need fastapi-offline (their files, served offline): "
                                 "pip install 'medpeft[serve]'")


@api.get("/docs", include_in_schema=False)
def swagger_page() -> HTMLResponse:
    """FastAPI's interactive page of the spec (Swagger UI, its files served by this server)."""
    _check_docs_assets()
    return get_swagger_ui_html(
        openapi_url="openapi.json", title="medpeft API", swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
    )


@api.get("/redoc", include_in_schema=False)
def redoc_page() -> HTMLResponse:
    """FastAPI's reference page of the spec (ReDoc, its files served by this server, no web fonts)."""
    _check_docs_assets()
    return get_redoc_html(
        openapi_url="openapi.json", title="medpeft API", redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False,
    )


@public.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The web page: pick a task, upload an image per modality, see the probabilities."""
    return FileResponse(STATIC / "index.html")
