"""Training losses and the logits -> probabilities map of each task type."""

from __future__ import annotations

import torch
from torch import nn

from medpeft.tasks import check_task


class MultilabelBCE(nn.Module):
    """BCE-with-logits that accepts 0/1 targets of any dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy over all sample-label pairs."""
        return self.bce(logits, targets.to(logits.dtype))


def build_loss(task: str, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy with label smoothing (multiclass) or BCE-with-logits (multilabel).

    Label smoothing applies to multiclass only; multilabel uses plain BCE, as in
    MeLo's recipe where one smoothing setting serves both task types.
    """
    if check_task(task) == "multiclass":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return MultilabelBCE()


def to_scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits: softmax (multiclass) or sigmoid (multilabel), in fp32."""
    logits = logits.float()
    if check_task(task) == "multiclass":
        return logits.softmax(dim=-1)
    return logits.sigmoid()
