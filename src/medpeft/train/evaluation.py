"""Inference over a loader: ``evaluate`` (metrics, scores, loss) and ``predict`` (scores).

Batches are ``(inputs, targets)``, ``(inputs,)`` or ``inputs``; inputs are a tensor or a
nested dict of tensors, moved to the model's device and passed as ``model(inputs)``.
Autocast is used on CUDA only. Under several processes each evaluates its slice of a
sharded loader (`medpeft.data.loader.EvalShard`) and every process gets all rows back in
sample order, each sample counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medpeft.data.loader import EvalShard
from medpeft.errors import DataError
from medpeft.metrics import compute_metrics
from medpeft.mixed_precision import autocast
from medpeft.tasks import check_task
from medpeft.train.distributed import gather_rows
from medpeft.train.losses import build_loss, to_scores


@dataclass
class EvalResult:
    """Metrics, probabilities ``[N, C]``, targets and mean loss over a loader."""

    metrics: dict[str, float]
    scores: np.ndarray
    targets: np.ndarray
    loss: float


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a tensor or a nested dict/list/tuple of tensors to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs: a tensor, or an object with ``.logits``."""
    return getattr(outputs, "logits", outputs)


def _split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a batch of ``(inputs, targets)``, ``(inputs,)`` or ``inputs``."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _collect(model: nn.Module, loader: Any, progress: bool, dtype: torch.dtype | None):
    """Concatenated fp32 CPU logits and targets (None when batches carry no targets)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
            inputs, target = _split_batch(batch)
            with autocast(device, dtype):
                logits.append(logits_of(model(to_device(inputs, device))).float().cpu())
            if target is not None:
                targets.append(torch.as_tensor(target))
    model.train(was_training)
    if not logits:
        raise DataError("loader yields no batches")
    logits, targets = torch.cat(logits), (torch.cat(targets) if targets else None)
    shard = getattr(loader, "sampler", None)
    if isinstance(shard, EvalShard):  # one process's slice: gather all, drop the padding
        logits = gather_rows(logits, shard.total)
        targets = gather_rows(targets, shard.total) if targets is not None else None
    return logits, targets


def evaluate(
    model: nn.Module,
    loader: Any,
    task: str,
    class_names: list[str] | None = None,
    progress: bool = False,
    amp_dtype: torch.dtype | None = torch.float16,
    positive: int = 1,
) -> EvalResult:
    """Metrics, probabilities and mean (unsmoothed) loss of the model over a labelled loader
    (``positive``: index of a two-class task's positive class, see `compute_metrics`)."""
    check_task(task)  # before the pass over the loader, not after
    logits, targets = _collect(model, loader, progress, amp_dtype)
    if targets is None:
        raise DataError("evaluate needs (inputs, targets) batches")
    loss = float(build_loss(task)(logits, targets))
    scores = to_scores(task, logits)
    metrics = compute_metrics(task, scores, targets, class_names, positive=positive)
    return EvalResult(metrics=metrics, scores=scores.numpy(), targets=targets.numpy(), loss=loss)


def predict(
    model: nn.Module,
    loader: Any,
    task: str,
    progress: bool = False,
    amp_dtype: torch.dtype | None = torch.float16,
) -> np.ndarray:
    """Probabilities ``[N, C]`` for batches of ``inputs`` or ``(inputs, targets)``."""
    check_task(task)  # before the pass over the loader, not after
    logits, _ = _collect(model, loader, progress, amp_dtype)
    return to_scores(task, logits).numpy()
