"""Is the model hub reachable? Answered in at most `CONNECT_TIMEOUT_S`, before a download is tried.

Offline, ``huggingface_hub`` retries for a minute before failing; `check_hub_weights` asks
first (``HF_HUB_OFFLINE=1`` answers at once, otherwise one TCP connect to the hub host)
and, if the hub is out of reach and the weights are not in the local hub cache, stops with
one line naming ``model.weights``.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from medpeft.errors import WeightsError

CONNECT_TIMEOUT_S = 2.0
DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Files a hub repo's weights may be in (timm, transformers, open_clip).
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def offline_reason() -> str | None:
    """Why the hub cannot be reached (an offline variable, or no connection), or None if it can."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable}={os.environ[variable]}"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    if not _reachable(endpoint.hostname or "", port):
        return f"no connection to {endpoint.hostname} within {CONNECT_TIMEOUT_S:.0f} s"
    return None


@functools.cache
def _reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` opens within `CONNECT_TIMEOUT_S` (once per process)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def in_hub_cache(repo: str) -> bool:
    """Whether the local hub cache holds a weights file of ``repo``."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in WEIGHT_FILES)


def check_hub_weights(name: str, repo: str | None, hint: str = "download the checkpoint elsewhere") -> None:
    """WeightsError in one line if the weights of ``name`` (hub ``repo``) cannot be had offline.

    Passes when ``repo`` is unknown (the library fetches from elsewhere), is cached, or the
    hub is reachable. ``hint`` says where the weights are (e.g. a gated preset's access page).
    """
    if repo is None or in_hub_cache(repo):
        return
    reason = offline_reason()
    if reason is not None:
        raise WeightsError(
            f"model.pretrained: the hub is offline ({reason}) and {name!r} ({repo}) is not in the local "
            f"cache; {hint}, then pass the file with model.weights=path/to/model.safetensors "
            "(a key=value after the config: medpeft train CONFIG model.weights=...)"
        )
