"""ViLT image + text backbone (Kim et al., ICML 2021): weights, text positions, tokenizer.

:func:`build_vilt` creates a Hugging Face ``ViltModel`` (random init, a local
checkpoint or hub weights); the classifier that runs it block by block over the
batch dict is :class:`medpeft.fusion.vilt.ViltClassifier`.

Text tokens: ViLT's text position table holds ``config.max_position_embeddings`` (40)
rows; :func:`resize_text_positions` interpolates it to a longer ``max_text_len``, as the
missing-aware-prompts code does when it loads the checkpoint.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertTokenizerFast, ViltConfig, ViltModel

from medpeft.backbones.library import from_pretrained_checked
from medpeft.backbones.weights import fit_state_dict, read_state_dict
from medpeft.errors import ConfigError, WeightsError

DEFAULT_VILT = "dandelin/vilt-b32-mlm"
DEFAULT_TOKENIZER = "bert-base-uncased"


def build_vilt(
    name_or_path: str = DEFAULT_VILT,
    config: ViltConfig | Mapping | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
) -> ViltModel:
    """Create a ``ViltModel``: random init, a local checkpoint, or hub weights.

    Args:
        name_or_path: Hub id or local folder (``config.json`` + weights) for ``pretrained``.
        config: Architecture for random init or a weights file (default
            ``ViltConfig()``, ViLT-B/32).
        weights: Local folder saved by ``save_pretrained``, or a state-dict file
            (``.safetensors``/``.pth``/``.bin``, keys with or without ``vilt.``);
            takes precedence over ``pretrained``.
        pretrained: Load ``name_or_path`` with ``from_pretrained``.
    """
    if isinstance(config, Mapping):
        config = ViltConfig(**config)
    if weights is not None and Path(weights).is_dir():
        return _from_pretrained(weights)
    if weights is None and pretrained:
        return _from_pretrained(name_or_path)
    model = ViltModel(config or ViltConfig())
    if weights is not None:
        load_vilt_weights(model, weights)
    return model


def _from_pretrained(source: str | Path) -> ViltModel:
    """``ViltModel.from_pretrained(source)``, every tensor from the checkpoint but the pooler
    (trained with the adapter); task heads (``mlm_score``, ...) are left out and logged."""
    try:
        return from_pretrained_checked(ViltModel, source, "vilt")
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{source}: refused to unpickle a Python object other than tensors (it could run "
            "code; weights are read with weights_only=True). Convert it to model.safetensors"
        ) from error
    except (OSError, ValueError) as error:
        raise WeightsError(
            f"cannot load ViLT weights from {source!r} ({error}). Offline? Download "
            f"{DEFAULT_VILT} elsewhere and pass its folder (config.json + model.safetensors) "
            "or a state-dict file with weights=... (config key model.weights)"
        ) from error


def load_vilt_weights(model: ViltModel, path: str | Path) -> None:
    """Load a local ViLT state dict (keys with or without ``vilt.``), all of it or nothing;
    task heads (``mlm_score``, ``classifier``, ...) are left out and logged."""
    state = {k.removeprefix("vilt."): v for k, v in read_state_dict(path).items()}
    try:
        model.load_state_dict(fit_state_dict(state, model.state_dict(), path, "vilt"))
    except WeightsError as error:
        raise WeightsError(
            f"{error} (Hugging Face ViltModel/ViltFor* keys expected; pass the matching config=...)"
        ) from error


def resize_text_positions(vilt: ViltModel, max_text_len: int) -> ViltModel:
    """Give ``vilt`` a text position table of ``max_text_len`` rows, interpolated from the old one.

    The missing-aware-prompts (MAP) recipe for texts longer than ViLT's 40 positions:
    each hidden channel of the ``[P, dim]`` table is resampled linearly along the
    position axis (``F.interpolate``, ``align_corners=False``, the same numbers as MAP's
    ``mode="bilinear"`` on ``[1, 1, P, dim]``), so the first and last rows of a longer
    table are the pretrained first and last rows and the rest lie between their
    neighbours. The ``position_ids`` and ``token_type_ids`` buffers and
    ``config.max_position_embeddings`` (of a copy of the config, which
    ``ViltModel`` shares with its caller) follow the new length. In place; no-op when
    the length is unchanged.

    The new table keeps the old one's ``requires_grad``; the model builder freezes it
    with the rest of the backbone (in MAP it is part of the frozen text embeddings).

    Raises:
        ConfigError: ``max_text_len`` below 1.
    """
    if max_text_len < 1:
        raise ConfigError(f"model.max_text_len must be at least 1, got {max_text_len}")
    text = vilt.embeddings.text_embeddings
    old = text.position_embeddings.weight
    if max_text_len == old.shape[0]:
        return vilt
    new = nn.Embedding(max_text_len, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        table = F.interpolate(old.float().T[None], max_text_len, mode="linear", align_corners=False)
        new.weight.copy_(table[0].T)
    new.weight.requires_grad_(old.requires_grad)
    text.position_embeddings = new
    ids = torch.arange(max_text_len, device=text.position_ids.device)
    text.position_ids = ids.expand(1, -1)  # buffers keep their non-persistent status
    text.token_type_ids = torch.zeros_like(text.position_ids)
    vilt.config = copy.deepcopy(vilt.config)  # the caller's ViltConfig may build other models
    vilt.config.max_position_embeddings = max_text_len
    return vilt


def build_tokenizer(name_or_path: str | Path = DEFAULT_TOKENIZER) -> BertTokenizerFast:
    """BERT WordPiece tokenizer (ViLT: bert-base-uncased) from a hub id, a folder or a vocab.txt."""
    path = Path(name_or_path)
    try:
        if path.is_file():
            return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
        return BertTokenizerFast.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise WeightsError(
            f"cannot load the tokenizer {str(name_or_path)!r} ({error}). Offline? Pass a local "
            f"folder of {DEFAULT_TOKENIZER} (vocab.txt, tokenizer_config.json) or its vocab.txt"
        ) from error
