"""Model weights in local files: read (safetensors, or torch pickles loaded safely),
write (safetensors, atomically) and copy into a model's tensors with checks."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medpeft.atomic import atomic_write
from medpeft.errors import WeightsError

_NESTED_KEYS = ("state_dict", "model", "module", "teacher")


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data only.

    A pickle that holds any other Python object is refused before it is built (its
    code never runs); that, and a file that is no pickle at all, raise a one-line
    WeightsError.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # torch raises KeyError, RuntimeError... for files it cannot parse
        blocked = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
        if not isinstance(error, pickle.UnpicklingError) or blocked is None:
            raise WeightsError(f"cannot read {path}: not a torch file of tensors") from error
        raise WeightsError(
            f"{path}: refused to unpickle {blocked.group(1)} (loading Python objects other "
            "than tensors could run code; medpeft loads torch files with weights_only=True). "
            "If the file comes from a source you trust, convert it to .safetensors"
        ) from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``name -> tensor`` dict from ``.safetensors``, ``.pth``, ``.pt`` or ``.bin``.

    Pickled files are read with ``weights_only=True`` (no arbitrary code runs).
    Checkpoints that nest the weights under ``state_dict``/``model`` are unwrapped
    and a ``module.`` prefix (DataParallel) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch_file(path)
    except WeightsError:
        raise
    except Exception as error:
        raise WeightsError(
            f"cannot read weights from {path}: {error}. Expected a .safetensors file or a "
            "torch state dict (.pth/.pt/.bin) that loads with weights_only=True"
        ) from error
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a flat name -> tensor state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def write_state_dict(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` (as contiguous CPU copies) to a safetensors file atomically."""
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def copy_weights(
    params: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str | Path
) -> None:
    """Copy ``state`` into ``params`` after checking all names and shapes; errors name the tensor.

    Nothing is copied unless every tensor fits.

    Raises:
        WeightsError: naming ``source`` and the missing, unexpected or misshapen tensors.
    """
    missing = sorted(params.keys() - state.keys())
    unexpected = sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise WeightsError(
            f"{source}: tensors do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, param in params.items():
        if param.shape != state[key].shape:
            shapes = f"{tuple(state[key].shape)}, expected {tuple(param.shape)}"
            raise WeightsError(f"{source}: tensor {key} has shape {shapes}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])
