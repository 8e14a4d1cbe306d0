"""``TrainSettings``: the trainer's hyper-parameters, validated on construction.

Defaults follow MeLo's public recipe (Adam lr 1e-3, cosine to 1e-6, 20 epochs,
AMP, label smoothing 0.1, best by validation AUROC). MoRA: ``optimizer="adamw"``,
``betas=(0.9, 0.98)``, ``weight_decay=0.02``, ``lr=5e-3``, ``warmup_fraction=0.02``,
``schedule="linear"``, ``min_lr=0``, ``monitor="f1_macro"``. EI: ``optimizer="sgd"``,
``momentum=0.95``, ``weight_decay=1e-4``, ``lr=1e-3``, ``min_lr=1e-5``, ``schedule="cyclic"``,
``monitor="map"``, ``patience=10``, ``epochs=200``, ``repeats=3``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medpeft.errors import ConfigError, did_you_mean
from medpeft.metrics import METRICS, PER_CLASS
from medpeft.train.distributed import is_distributed, process_device
from medpeft.train.schedules import OPTIMIZERS, SCHEDULES

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ACCELERATORS = ("cuda", "xpu", "mps")


@dataclass
class TrainSettings:
    """Trainer hyper-parameters.

    Attributes:
        warmup: warmup length in epochs (may be fractional).
        warmup_fraction: warmup as a fraction of all optimizer steps (use one of the two).
        schedule: ``cosine``, ``linear``, ``constant`` or ``cyclic`` (between ``min_lr`` and
            ``lr``; EI: 1e-5..1e-3).
        cycle_epochs, cycle_decay: ``cyclic`` only: epochs from the lowest to the highest lr
            (half a cycle; EI: 4) and the amplitude factor per cycle (EI: 0.8).
        amp: mixed precision: ``amp_dtype`` "fp16" (CUDA only, with GradScaler) or "bf16"
            (CUDA, and CPU autocast).
        max_grad_norm: clip the gradient norm to this value; None = no clipping.
        monitor: history value that selects the best epoch ("auroc", "f1_macro", "val_loss", ...).
        patience: stop after this many epochs (= validations) without improvement; None = never.
        repeats: ``medpeft train`` runs the config this many times, seeds ``seed`` ..
            ``seed + repeats - 1``, into ``rep<i>/`` and summarises mean ± std
            (`medpeft.runs.repeats`; EI: 3).
        log_every: optimizer steps between progress-bar/TensorBoard updates.
        device: "auto" (CUDA if available; under ``accelerate launch`` the process's own
            GPU), "cpu", "cuda", "cuda:1", ...
        compile: run the model's forward through ``torch.compile`` (parameter names, adapter
            routing and checkpoints unchanged; the first steps pay the compilation).
        channels_last: keep image batches and the patch embedding in channels-last memory
            layout (faster convolutions on recent GPUs).
        activation_checkpointing: recompute each backbone block's activations in backward
            instead of keeping them (:mod:`medpeft.checkpointing`): true, false or "auto"
            (on when the estimated activations exceed half of the training device's free memory).
        on_bad_sample: a sample that cannot be read (corrupt or truncated file, NaN
            pixels): ``stop`` ends the run with one line naming it; ``skip`` leaves it
            out, logs it once and lists it in ``report.json``.
    """

    epochs: int = 20
    optimizer: str = "adam"
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = 0.0
    warmup_fraction: float = 0.0
    schedule: str = "cosine"
    cycle_epochs: float = 4.0
    cycle_decay: float = 0.8
    label_smoothing: float = 0.1
    grad_accum_steps: int = 1
    amp: bool = True
    amp_dtype: str = "fp16"
    max_grad_norm: float | None = None
    monitor: str = "auroc"
    monitor_mode: str = "max"
    patience: int | None = None
    seed: int = 0
    repeats: int = 1
    log_every: int = 10
    tensorboard: bool = False
    device: str = "auto"
    compile: bool = False
    channels_last: bool = False
    activation_checkpointing: bool | str = False
    on_bad_sample: str = "stop"

    def __post_init__(self) -> None:
        """Check every field; raise ConfigError naming the first bad one."""
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name, (check, expected) in _RULES.items():
            if not _passes(check, getattr(self, name)):
                value = getattr(self, name)
                raise ConfigError(f"train.{name}: expected {expected}, got {value!r}")
        if self.min_lr > self.lr:
            raise ConfigError(
                f"train.min_lr: expected <= lr ({self.lr}), got {self.min_lr!r}"
            )
        check_monitor(self.monitor)
        if self.warmup and self.warmup_fraction:
            raise ConfigError(
                "train.warmup_fraction: set either warmup (epochs) or warmup_fraction"
            )


HISTORY_VALUES = ("val_loss", "train_loss")


def check_monitor(monitor: str, task: str | None = None, labels: Sequence[str] | None = None) -> None:
    """ConfigError (with a did-you-mean) unless ``monitor`` is a value the trainer logs.

    Without ``task`` and ``labels`` (on load) any task's metric and any per-class value
    (``auroc/<class>``) pass; once the data is read they narrow the check.
    """
    tasks = [task] if task else list(METRICS)
    known = [*HISTORY_VALUES, *dict.fromkeys(m for t in tasks for m in METRICS[t])]
    metric, sep, label = monitor.partition("/")
    if monitor in known or (sep and metric in PER_CLASS and (labels is None or label in labels)):
        return
    if sep and metric in PER_CLASS:
        raise ConfigError(f"train.monitor: {monitor!r} names no class of {list(labels)}{did_you_mean(label, labels)}")
    raise ConfigError(
        f"train.monitor: {monitor!r} is not a value training logs{' for ' + task if task else ''}; "
        f"expected one of {known} or auroc/<class>{did_you_mean(monitor, known)}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_device(value: Any) -> bool:
    if value == "auto":
        return True
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return True


def _passes(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except TypeError:
        return False


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "min_lr": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "betas": (
        lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
    ),
    "warmup": (lambda v: _is_number(v) and v >= 0, "a number of epochs >= 0"),
    "warmup_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "cycle_epochs": (lambda v: _is_number(v) and v > 0, "a number of epochs > 0"),
    "cycle_decay": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "grad_accum_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "amp_dtype": (lambda v: v in AMP_DTYPES, f"one of {list(AMP_DTYPES)}"),
    "max_grad_norm": (lambda v: v is None or (_is_number(v) and v > 0), "None or a number > 0"),
    "monitor": (lambda v: isinstance(v, str) and v != "", "a metric name"),  # and check_monitor
    "monitor_mode": (lambda v: v in ("max", "min"), "'max' or 'min'"),
    "patience": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an integer >= 1"),
    "seed": (_is_int, "an integer"),
    "repeats": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "tensorboard": (lambda v: isinstance(v, bool), "true or false"),
    "device": (_is_device, "'auto' or a torch device such as 'cpu', 'cuda:0'"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
    "activation_checkpointing": (lambda v: isinstance(v, bool) or v == "auto", "true, false or 'auto'"),
    "on_bad_sample": (lambda v: v in ("stop", "skip"), "'stop' or 'skip'"),
}


def autocast_dtype(settings: TrainSettings) -> torch.dtype | None:
    """The autocast dtype the settings ask for, or None without AMP."""
    return AMP_DTYPES[settings.amp_dtype] if settings.amp else None


def training_device(settings: TrainSettings) -> torch.device:
    """The device training runs on: the process's own GPU under ``accelerate launch``, else ``train.device``."""
    return process_device() if is_distributed() else resolve_device(settings.device, "train.device")


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; other names as torch devices. Under a
    launcher, ``"auto"`` and ``"cuda"`` mean the process's own device.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...
        key: The setting or option ``name`` comes from, for the message (``train.device``, ``--device``).

    Raises:
        ConfigError: ``name`` is no device this machine has (not a torch device name, no
            CUDA, a GPU index beyond the count), listing the ones it has.
    """
    if name == "auto" or (name == "cuda" and is_distributed()):
        return process_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or not _present(device):
        raise ConfigError(f"{key}: {name!r} is not a device of this machine; valid: {', '.join(available_devices())}")
    return device


def available_devices() -> list[str]:
    """The device names this machine takes: ``auto``, ``cpu``, then ``cuda`` and ``cuda:<i>`` per
    GPU (likewise ``xpu``) and ``mps`` where present."""
    names = ["auto", "cpu"]
    for kind in ACCELERATORS:
        count = _device_count(kind)
        if count:
            names += [kind, *(f"{kind}:{i}" for i in range(count))]
    return names


def _present(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    count = _device_count(device.type) if device.type in ACCELERATORS else 0
    return count > 0 and (device.index is None or device.index < count)


def _device_count(kind: str) -> int:
    """GPUs of an accelerator kind (``cuda``, ``xpu``, ``mps``) this machine has; 0 if none."""
    backend = getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    return backend.device_count() if available is not None and available() else 0
