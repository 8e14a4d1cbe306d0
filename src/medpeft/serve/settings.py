"""Settings of the HTTP server (``medpeft serve``): batching, queue, limits, token."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from medpeft.data.imageio import MAX_PIXELS
from medpeft.errors import ConfigError
from medpeft.threads import available_cores

TOKEN_ENV = "MEDPEFT_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, queues and guards requests.

    Attributes:
        max_batch: Samples per forward pass; a batch closes when it is full ...
        max_wait_ms: ... or this long after its first sample arrived (waiting only while
            other requests are being read or decoded).
        queue_size: Samples waiting for a batch; beyond it requests get 503.
        max_upload_mb: Largest request body (all files together); beyond it 413.
        token: Bearer token every API call must carry (``None``: no auth).
        max_pixels: Most pixels of an uploaded image (or of the slice read from a
            volume), checked before decoding, for every task whatever its adapter records.
        max_decodes: Threads decoding and preprocessing uploads, so uploads decoded at
            once (default: the CPU cores); others wait.
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue_size: int = 256
    max_upload_mb: float = 32.0
    token: str | None = None
    max_pixels: int = MAX_PIXELS
    max_decodes: int = field(default_factory=available_cores)

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "max_pixels", "max_decodes"):
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


def token_from(option: str | None, no_auth: bool = False) -> str | None:
    """The bearer token: the ``--token`` option, else the ``MEDPEFT_TOKEN`` environment variable.

    None (an open API) when neither is set, or with ``no_auth``. ConfigError for
    ``MEDPEFT_TOKEN`` set but empty (a token was meant, none would be checked) unless
    ``no_auth`` says so, and for ``--token`` together with ``no_auth``.
    """
    if no_auth:
        if option is not None:
            raise ConfigError("serve: --token and --no-auth contradict each other; give one")
        return None
    if option is not None:
        return option
    value = os.environ.get(TOKEN_ENV)
    if value is not None and not value.strip():
        raise ConfigError(
            f"serve: {TOKEN_ENV} is set but empty, so anyone could call the API; set it to a secret "
            "(e.g. openssl rand -hex 16), or pass --no-auth to serve without a token"
        )
    return value
