"""Model weights in local files: read (safetensors, or torch pickles loaded safely),
write (safetensors, atomically) and copy into a model's tensors with checks.

Backbone loads are all-or-error (:func:`fit_state_dict`, :func:`check_loading_info`):
a checkpoint tensor that is part of no encoder is dropped only when its name is a
known one of the family (:data:`NON_ENCODER_KEYS`: an MAE decoder, DINO heads, a
classifier the model does not use, CLIP's text tower, ViLT's task heads), and the
log names those prefixes and counts; any other tensor the model lacks, and any
encoder tensor the checkpoint lacks, is a :class:`WeightsError` listing them.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from medpeft.atomic import atomic_write
from medpeft.errors import WeightsError

_NESTED_KEYS = ("state_dict", "model", "module", "teacher")
_LISTED = 5  # keys named in an error

log = logging.getLogger(__name__)

MAE_DECODER = ("mask_token", "decoder_embed.", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.",
               "decoder_pred.")
DINO_HEADS = ("dino_head.", "ibot_head.")
CLASSIFIERS = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "classifier.")
CLIP_TEXT = ("text.", "transformer.", "token_embedding.", "positional_embedding", "ln_final.",
             "text_projection", "logit_scale", "logit_bias")
VILT_HEADS = ("mlm_score.", "itm_score.", "mpp_score.", "rank_output.", "classifier.")
NON_ENCODER_KEYS: dict[str, tuple[str, ...]] = {
    "timm": MAE_DECODER + DINO_HEADS + CLASSIFIERS + CLIP_TEXT,
    "transformers": CLASSIFIERS,
    "open_clip": CLIP_TEXT,
    "vilt": VILT_HEADS,
}
"""Per family, name prefixes of checkpoint tensors that belong to no encoder: dropped (and
logged) when the model has no tensor of that name, so ConvNeXt's ``head.norm`` or a ViT's
``fc_norm`` the model pools with still load. timm's list covers what its checkpoint
conversions drop themselves (DINOv2's ``mask_token``, CLIP's text tower)."""


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


def load_error_line(error: BaseException, limit: int = 400) -> str | None:
    """A torch ``load_state_dict`` error (missing, unexpected or misshapen tensors) as one line of
    at most ``limit`` characters; None for any other error."""
    text = str(error)
    if not isinstance(error, RuntimeError) or "Error(s) in loading state_dict" not in text:
        return None
    line = " ".join(part.strip() for part in text.splitlines())
    return line if len(line) <= limit else f"{line[:limit]} ..."


def fit_state_dict(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    source: str | Path,
    family: str,
    fresh: tuple[str, ...] = (),
    dropped_before: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` to load into a model whose state dict is ``own``: every one.

    Args:
        state: The checkpoint's tensors (converted to the model's names).
        own: The model's state dict.
        source: The checkpoint, for messages.
        family: Key of :data:`NON_ENCODER_KEYS` naming the tensors that may be dropped.
        fresh: Prefixes of model tensors not loaded (a new classifier): the checkpoint's
            tensors there are dropped, the model's may be absent from it.
        dropped_before: Checkpoint keys a conversion already left out, for the log line.

    Raises:
        WeightsError: an encoder tensor missing from ``state``, a tensor of ``state`` the
            model lacks whose name is not a known non-encoder one, or a shape that differs.
    """
    known = NON_ENCODER_KEYS[family]
    dropped = {k for k in state if k.startswith(fresh) or (k not in own and k.startswith(known))}
    kept = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in kept and not k.startswith(fresh)]
    check_complete(source, missing, [k for k in kept if k not in own], len(own))
    wrong = [k for k, v in kept.items() if own[k].shape != v.shape]
    if wrong:
        details = ", ".join(f"{k} {tuple(kept[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise WeightsError(f"{source}: tensor shapes do not match the model: {details}")
    report_dropped(source, [*dropped_before, *dropped], (*fresh, *known))
    return kept


def check_loading_info(
    info: Mapping[str, list[str]],
    source: str | Path,
    family: str,
    expected: int,
    optional: tuple[str, ...] = (),
    hint: str = "",
) -> None:
    """All-or-error for a transformers ``from_pretrained(..., output_loading_info=True)``.

    Args:
        info: The loading info (``missing_keys``, ``unexpected_keys``, ``mismatched_keys``).
        source: The folder or hub id loaded.
        family: Key of :data:`NON_ENCODER_KEYS` naming unexpected tensors that may be dropped.
        expected: How many tensors the model has (for the message).
        optional: Prefixes of model tensors that may stay at their init (not used, or trained).
        hint: What the message says first (e.g. the checkpoint's model type).

    Raises:
        WeightsError: a missing, unknown unexpected or misshapen tensor.
    """
    known = NON_ENCODER_KEYS[family]
    unexpected = list(info.get("unexpected_keys", []))
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(optional)]
    check_complete(source, missing, [k for k in unexpected if not k.startswith(known)], expected, hint)
    mismatched = [str(k[0]) if isinstance(k, (tuple, list)) else str(k) for k in info.get("mismatched_keys", [])]
    if mismatched:
        raise WeightsError(f"{source}: tensor shapes do not match the model: {_listed(mismatched)}")
    report_dropped(source, unexpected, known)


def check_complete(
    source: str | Path, missing: Collection[str], unexpected: Collection[str], expected: int, hint: str = ""
) -> None:
    """WeightsError naming (up to 5 of) the model tensors ``source`` lacks and the ones it has
    that the model lacks, with their counts; nothing when both are empty."""
    if not missing and not unexpected:
        return
    parts = [f"{len(missing)} of the model's {expected} tensors {_are(missing)} not in it ({_listed(missing)})"
             ] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} of its tensors {_are(unexpected)} not in the model ({_listed(unexpected)})")
    lead = f"{hint}; " if hint else ""
    raise WeightsError(
        f"{source} does not match the backbone: {lead}{'; '.join(parts)}. Is it a checkpoint of "
        "this architecture and size (model.backbone, model.kind, model.kwargs)?"
    )


def report_dropped(source: str | Path, keys: Iterable[str], prefixes: Iterable[str]) -> None:
    """Log one line naming the prefixes of the checkpoint tensors left out, with their counts."""
    prefixes = sorted(prefixes, key=len, reverse=True)  # the most specific prefix names a key
    counts = Counter(next((p for p in prefixes if k.startswith(p)), k) for k in keys)
    if counts:
        groups = ", ".join(f"{_pattern(p)} ({n})" for p, n in sorted(counts.items()))
        log.info("%s: left out %d tensor(s) that are not part of the encoder: %s",
                 source, sum(counts.values()), groups)


def _pattern(prefix: str) -> str:
    return f"{prefix}*" if prefix.endswith(".") else prefix


def _are(keys: Collection[str]) -> str:
    return "is" if len(keys) == 1 else "are"


def _listed(keys: Collection[str]) -> str:
    shown = ", ".join(sorted(keys)[:_LISTED])
    return f"{shown}, ..." if len(keys) > _LISTED else shown
