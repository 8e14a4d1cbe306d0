"""Settings of the HTTP server (``medpeft serve``): batching, queue, upload limit, token."""

from __future__ import annotations

import os
from dataclasses import dataclass

from medpeft.errors import ConfigError

TOKEN_ENV = "MEDPEFT_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, queues and guards requests.

    Attributes:
        max_batch: Samples per forward pass; a batch closes when it is full ...
        max_wait_ms: ... or this long after its first sample arrived.
        queue_size: Samples waiting for a batch; beyond it requests get 503.
        max_upload_mb: Largest request body (all files together); beyond it 413.
        token: Bearer token every API call must carry (``None``: no auth).
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue_size: int = 256
    max_upload_mb: float = 32.0
    token: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: --{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "max_upload_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"serve: --{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("serve: --token is empty; give a secret or leave it out")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def token_from(option: str | None) -> str | None:
    """The bearer token: the ``--token`` option, else the ``MEDPEFT_TOKEN`` environment variable."""
    return option if option is not None else os.environ.get(TOKEN_ENV) or None
