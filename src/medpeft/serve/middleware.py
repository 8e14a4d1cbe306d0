"""ASGI middleware of the server: the request-body limit and request metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from medpeft.serve.metrics import ServeMetrics
from medpeft.units import format_size

Scope = dict[str, Any]
Message = dict[str, Any]


class UploadTooLarge(Exception):
    """A request body grew past the limit while it was being read."""


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before anything is read;
    a body without one (chunked) is counted as it arrives and `UploadTooLarge` is
    raised into the reader, which the app turns into 413.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is not a number")
                return
            if int(declared) > self.max_bytes:
                await send_json(send, 413, too_large(int(declared), self.max_bytes))
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(too_large(received, self.max_bytes))
            return message

        await self.app(scope, counted, send)


def too_large(size: int, limit: int) -> str:
    return (
        f"upload of {format_size(size, 'MiB')} is over the server's limit of {format_size(limit, 'MiB')} "
        "(medpeft serve --max-upload-mb)"
    )


async def send_json(send, status: int, detail: str) -> None:
    """Answer ``{"detail": ...}`` with ``status`` straight from the middleware."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Count requests by route, method and status, and time them by route."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - start)
