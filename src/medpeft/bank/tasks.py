"""Task folders of a bank: safe names, discovery, and the tensor bytes of an adapter file."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from medpeft.adapters_io.config import CONFIG_NAME, WEIGHTS_NAME
from medpeft.errors import ConfigError, WeightsError

RUN_ADAPTER_DIR = "adapter"  # a run folder's adapter (medpeft.run_layout.ADAPTER_DIR)
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # no "/", no leading "." (so no "..")
_HEADER_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header


@dataclass(frozen=True)
class TaskInfo:
    """What the bank knows of one task.

    Attributes:
        name: Task name (its folder's name for :meth:`AdapterBank.from_directory`).
        method: Tuning method of the adapter (``lora``...).
        labels: Names of the head's outputs, in score order.
        modalities: Inputs the task reads.
        task: ``multiclass`` or ``multilabel``.
        loaded: Whether the adapter is on the backbone now.
        bytes: Bytes of the adapter's tensors (LoRA weights and head).
    """

    name: str
    method: str
    labels: list[str]
    modalities: list[str]
    task: str
    loaded: bool
    bytes: int


def check_task_name(name: object) -> str:
    """``name`` if it is a safe task name (letters, digits, ``_.-``; no path), else ConfigError."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ConfigError(
            f"task name {name!r}: expected letters, digits, '_', '.' or '-' (not starting with "
            "'.', at most 128 characters, no path separators)"
        )
    return name


def task_folders(directory: str | Path) -> dict[str, Path]:
    """The adapter folders under ``directory``, by task name (sorted).

    ``directory`` may be an adapter folder (one task, named after it), a run folder
    (its ``adapter/``, named after the run), or a folder of either: each subfolder
    holding ``adapter_config.json`` or ``adapter/adapter_config.json`` is a task named
    after the subfolder (so ``medpeft demo``'s output folder serves as is).
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"adapter bank directory not found: {root}")
    own = adapter_folder(root)
    if own is not None:
        return {check_task_name(root.resolve().name): own}
    folders = {p.name: a for p in sorted(root.iterdir()) if p.is_dir() and (a := adapter_folder(p)) is not None}
    if not folders:
        raise ConfigError(
            f"{root}: no task folders (subfolders holding {CONFIG_NAME}, or run folders holding "
            f"{RUN_ADAPTER_DIR}/{CONFIG_NAME})"
        )
    for name in folders:
        check_task_name(name)
    return folders


def adapter_folder(folder: Path) -> Path | None:
    """``folder`` if it holds an adapter, its ``adapter/`` if it is a run folder, else None."""
    for candidate in (folder, folder / RUN_ADAPTER_DIR):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def tensor_bytes(folder: Path) -> int:
    """Bytes of the tensors in a folder's ``adapter_model.safetensors``, read from its header."""
    path = folder / WEIGHTS_NAME
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(_HEADER_BYTES))
            header = json.loads(f.read(length))
        return sum(
            end - start
            for key, entry in header.items()
            if key != "__metadata__"
            for start, end in [entry["data_offsets"]]
        )
    except (OSError, struct.error, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
