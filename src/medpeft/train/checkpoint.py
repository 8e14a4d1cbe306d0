"""Seeding, trainable-weight files and resumable training checkpoints.

``best.safetensors`` holds the trainable parameters only (``requires_grad``,
keyed by parameter name). ``checkpoint.pt`` adds the optimizer, scheduler,
GradScaler, progress counters and RNG states (python, numpy, torch, CUDA);
it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medpeft.atomic import atomic_write
from medpeft.backbones.weights import (
    copy_weights,
    load_torch_file,
    read_state_dict,
    write_state_dict,
)
from medpeft.errors import WeightsError

CHECKPOINT_FORMAT = 1


@dataclass
class Progress:
    """Where a run stands: epochs done, optimizer steps, best result, early-stop counter, and
    seconds spent so far on data waits, compute, evaluation and checkpoints (``timing``)."""

    epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states, as tensors and plain python values."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore RNG states saved by ``rng_state``."""
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    numpy_state["state"] = {**numpy_state["state"], "key": key}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters with ``requires_grad``, by name."""
    return {
        name: param.detach().cpu().clone().contiguous()
        for name, param in trainable_parameters(model).items()
    }


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters with ``requires_grad``, by name."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def load_trainable(
    model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "weights"
) -> None:
    """Copy ``tensors`` into the model's trainable parameters (all or nothing).

    Raises:
        WeightsError: if names or shapes differ from the model's trainable parameters.
    """
    copy_weights(trainable_parameters(model), tensors, source)


def save_trainable(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write the trainable parameters to a safetensors file atomically."""
    return write_state_dict(path, trainable_parameters(model), metadata)


def load_trainable_file(model: nn.Module, path: str | Path) -> None:
    """Load a file written by ``save_trainable`` into the model.

    Raises:
        WeightsError: if the file is missing or unreadable, or holds other tensors.
    """
    load_trainable(model, read_state_dict(path), source=str(path))


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    progress: Progress,
) -> Path:
    """Write everything needed to resume training, atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": asdict(progress),
        "rng": rng_state(),
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> Progress:
    """Restore a checkpoint written by ``save_checkpoint``; return its progress.

    Raises:
        WeightsError: if the file is unreadable or belongs to another model.
    """
    try:
        state = load_torch_file(path)
    except WeightsError:
        raise
    except Exception as error:
        raise WeightsError(f"{path}: cannot read checkpoint ({error})") from error
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{path}: not a medpeft training checkpoint (format {found!r}, "
            f"expected {CHECKPOINT_FORMAT})"
        )
    load_trainable(model, state["trainable"], source=str(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return Progress(**state["progress"])
