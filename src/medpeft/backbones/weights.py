"""Read model weights from local files: safetensors, or torch pickles loaded safely."""

from __future__ import annotations

from pathlib import Path

import torch

from medpeft.errors import WeightsError

_NESTED_KEYS = ("state_dict", "model", "module", "teacher")


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
            state = torch.load(path, map_location="cpu", weights_only=True)
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
