"""A task head written beside a library's own model: ``head.safetensors`` + ``head.json``.

Exports to a library whose model has no classifier of its own (transformers and
open_clip encoders) keep the task's head apart: ``head.safetensors`` holds the Linear's
``weight`` ``[classes, width]`` and ``bias``, ``head.json`` names the outputs and how the
features it reads are computed::

    {"labels": ["normal", "tb"], "task": "multiclass", "in_features": 768,
     "features": "model(pixel_values=images).pooler_output",
     "logits": "features @ weight.T + bias", "preprocessing": {...}}

``task`` is ``multiclass`` (softmax over the labels) or ``multilabel`` (a sigmoid each).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from medpeft.adapters_io.config import Preprocessing
from medpeft.atomic import atomic_write_text
from medpeft.backbones.base import Backbone
from medpeft.backbones.weights import write_state_dict
from medpeft.errors import ConfigError

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


def task_linear(head: nn.Module) -> nn.Linear:
    """The Linear that gives a head's logits (its last Linear: timm's ``head.fc`` of Swin)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"the task head is a {type(head).__name__} without a Linear; nothing to export")
    return linears[-1]


def write_head(
    out_dir: str | Path,
    head: nn.Module,
    view: Backbone,
    labels: Sequence[str] | None = None,
    task: str | None = None,
    preprocessing: Preprocessing | None = None,
    source: Mapping[str, object] | None = None,
) -> Path:
    """Write ``head.safetensors`` and ``head.json`` into ``out_dir``; return the JSON file.

    Args:
        out_dir: Export folder.
        head: The task head (its last Linear is written).
        view: The backbone the head reads, for the features expression.
        labels: Names of the outputs (default ``class_0``, ``class_1``...).
        task: ``multiclass`` or ``multilabel`` (``null`` when unknown).
        preprocessing: The input preprocessing, when known.
        source: Fields naming the backbone (``library``, ``backbone``, ``model_kwargs``).
    """
    linear = task_linear(head)
    labels = list(labels) if labels else [f"class_{i}" for i in range(linear.out_features)]
    if len(labels) != linear.out_features:
        raise ConfigError(f"{len(labels)} labels, but the head has {linear.out_features} outputs")
    info = {
        "labels": labels,
        "task": task,
        "in_features": linear.in_features,
        "features": view.features_call,
        "logits": "features @ weight.T + bias" if linear.bias is not None else "features @ weight.T",
    }
    if preprocessing is not None:
        info["preprocessing"] = dataclasses.asdict(preprocessing)
    info.update(source or {})
    out = Path(out_dir)
    write_state_dict(out / HEAD_WEIGHTS, linear.state_dict())
    return atomic_write_text(out / HEAD_CONFIG, json.dumps(info, indent=2) + "\n")
