"""Data loaders: shuffled (optionally class-balanced) training, in-order evaluation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from medpeft.data.records import Target
from medpeft.data.splits import strata
from medpeft.errors import ConfigError


def balanced_weights(targets: Sequence[Target]) -> torch.Tensor:
    """Per-sample weights that make every class about equally likely to be drawn.

    Multiclass: inverse class frequency. Multilabel: inverse frequency of the
    sample's rarest positive label; samples with no positive label form their
    own group ("normal").
    """
    groups = strata(targets)
    if targets and not isinstance(targets[0], int):
        counts = Counter(i for t in targets for i, v in enumerate(t) if v > 0)
        counts[-1] = groups.count(-1)
    else:
        counts = Counter(groups)
    return torch.tensor([1.0 / counts[g] for g in groups], dtype=torch.double)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    balanced: bool = False,
    seed: int = 0,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """Data loader for training (shuffled, optionally class-balanced) or evaluation (in order).

    Args:
        dataset: a dataset; ``balanced`` needs its ``targets`` (see `medpeft.data.dataset.Dataset`).
        batch_size: samples per batch.
        train: shuffle, and drop the last partial batch when the dataset is larger than a batch.
        num_workers: loader worker processes.
        balanced: train only; draw samples with replacement using `balanced_weights`.
        seed: seeds the shuffling/sampling generator (and the workers' base seed). Training
            workers are not persistent: each epoch starts workers seeded from the generator,
            which the trainer reseeds per epoch (reproducible resume).
        collate_fn: batches items (default: torch's default collate).
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if train and balanced:
        targets = getattr(dataset, "targets", None)
        if targets is None:
            name = type(dataset).__name__
            raise ConfigError(f"balanced sampling needs dataset.targets; {name} has none")
        weights = balanced_weights(targets)
        sampler = WeightedRandomSampler(weights, len(dataset), generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=generator,
        drop_last=train and len(dataset) > batch_size,
        persistent_workers=num_workers > 0 and not train,  # training workers restart per epoch
    )
