"""Task types: ``multiclass`` (one class per sample) or ``multilabel`` (0/1 per label)."""

from __future__ import annotations

from medpeft.errors import ConfigError

TASKS = ("multiclass", "multilabel")


def check_task(task: str) -> str:
    """Return ``task`` if it is a known task type.

    Raises:
        ConfigError: (a ``ValueError``) otherwise.
    """
    if task not in TASKS:
        raise ConfigError(f"task: expected one of {TASKS}, got {task!r}")
    return task
