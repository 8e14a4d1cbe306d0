"""``medpeft serve``: build the adapter bank of a directory and run the HTTP app with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from medpeft.errors import ConfigError
from medpeft.serve.settings import ServeSettings

logger = logging.getLogger("medpeft")


def serve(
    directory: str | Path,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    max_loaded: int | None = None,
    weights: str | Path | None = None,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
    frozen_dtype: str = "float32",
) -> None:
    """Serve every task folder of ``directory`` until interrupted.

    Args:
        directory: Folder of task adapter folders (or run folders) sharing one backbone, a run
            folder, or ``medpeft demo``'s output; fully fine-tuned models are served on
            a backbone of their own; tasks that cannot be served are skipped, each logged
            with its reason.
        settings: Batching, queue, upload limit and token.
        host: Interface to listen on.
        port: TCP port (0: any free one; the log names it).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        max_loaded: Most adapters on the backbone at once (None: no limit).
        weights: Backbone checkpoint for every task (default: the one they record).
        allow_random_backbone: Serve tasks that record neither weights nor a seed.
        allow_other_weights: Serve tasks trained on other backbone weights (a warning each).
        frozen_dtype: ``float32``, ``bfloat16`` or ``int8``: dtype of the shared backbone's frozen
            Linear/Conv weights (``bfloat16``: half their memory, ``int8``: a quarter of the
            Linear ones, torchao; both with forwards under bf16 autocast, fast on CPUs with
            native bf16; adapters and heads held in fp32).
    """
    try:
        import uvicorn
    except ImportError as error:
        raise ConfigError(f"medpeft serve needs the serve extra: pip install 'medpeft[serve]' ({error})") from error
    from medpeft.bank import BankGroup
    from medpeft.frozen_dtype import frozen_dtype_named
    from medpeft.serve.app import create_app
    from medpeft.train.settings import resolve_device

    bank = BankGroup.from_directory(
        directory, device=resolve_device(device), max_loaded=max_loaded, weights=weights,
        allow_random_backbone=allow_random_backbone, allow_other_weights=allow_other_weights,
        frozen_dtype=frozen_dtype_named(frozen_dtype, "--frozen-dtype"),
    )
    if settings.token is None and not _is_loopback(host):
        logger.warning(f"serving on {host} without a token: anyone who reaches it can predict "
                       "and load or unload tasks (set --token or MEDPEFT_TOKEN)")
    for name, reason in bank.skipped.items():
        logger.warning(f"skipped task {name}: {reason}")
    served = ", ".join(info.name for info in bank.tasks())
    logger.info(f"serving {len(bank.tasks())} tasks ({served}) from {directory} on {bank.device}, "
                f"frozen weights in {frozen_dtype}"
                + (f"; skipped {len(bank.skipped)}: {', '.join(bank.skipped)}" if bank.skipped else ""))
    uvicorn.run(create_app(bank, settings, directory), host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
