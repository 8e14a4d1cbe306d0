"""Training: ``fit`` / ``evaluate`` / ``predict``, settings, losses, schedules, checkpoints."""

from medpeft.train.checkpoint import (
    load_trainable_file,
    save_trainable,
    seed_everything,
    trainable_state,
)
from medpeft.train.evaluation import EvalResult, evaluate, predict, to_device
from medpeft.train.losses import build_loss, to_scores
from medpeft.train.schedules import build_optimizer, build_scheduler, lr_at
from medpeft.train.settings import TrainSettings
from medpeft.train.trainer import FitResult, fit

__all__ = [
    "EvalResult",
    "FitResult",
    "TrainSettings",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "load_trainable_file",
    "lr_at",
    "predict",
    "save_trainable",
    "seed_everything",
    "to_device",
    "to_scores",
    "trainable_state",
]
