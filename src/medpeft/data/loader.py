"""Data loaders: shuffled (optionally class-balanced) training, in-order evaluation.

Training items are read under seeds of their own (`SeededDraws`, `SeededItems`): the
random augmentation of the item at position ``p`` of an epoch depends on the loader's
seed, the epoch and ``p`` only, not on which worker process reads it, so
``num_workers`` does not change what is trained.

`SkippingLoader` wraps a loader over a dataset that skips unreadable samples
(``train.on_bad_sample: skip``): it logs each skipped sample once, keeps the list
for the run report and leaves out batches that have no sample left.

Under several processes (``torch.distributed`` initialised, e.g. by ``accelerate
launch``) each process loads its share: a training batch of ``batch_size`` is the
*global* batch, split item by item between the processes (`BatchShard`), so the
optimizer sees the batches one process would; evaluation gives each process a
contiguous, equally long slice padded with the last sample (`EvalShard`), which
`medpeft.train.distributed.gather_rows` joins back and trims.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    WeightedRandomSampler,
)

from medpeft.data.records import Target
from medpeft.data.splits import strata
from medpeft.errors import ConfigError

log = logging.getLogger(__name__)


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


class OversampleSampler(Sampler[int]):
    """Every class repeated up to the size of the largest, reshuffled each epoch.

    The public EI code's ``*_train_balance`` lists: a class of ``n`` samples appears
    ``max // n`` times in full plus ``max % n`` samples drawn without replacement, so an
    epoch holds ``groups * max`` items (groups as in `balanced_weights`: the class, or a
    multilabel sample's rarest positive label, or "no label").
    """

    def __init__(self, targets: Sequence[Target], generator: torch.Generator) -> None:
        groups = torch.tensor(strata(targets))
        self.members = [torch.nonzero(groups == g).flatten() for g in torch.unique(groups)]
        self.largest = max(len(m) for m in self.members)
        self.generator = generator

    def __len__(self) -> int:
        return self.largest * len(self.members)

    def __iter__(self) -> Iterator[int]:
        chosen = []
        for members in self.members:
            extra = torch.randperm(len(members), generator=self.generator)[: self.largest % len(members)]
            chosen.append(members.repeat(self.largest // len(members)))
            chosen.append(members[extra])
        order = torch.cat(chosen)[torch.randperm(len(self), generator=self.generator)]
        return iter(order.tolist())


class SeededDraws(Sampler[tuple[int, int]]):
    """The indices of ``order``, each paired with the seed of its random draws.

    An epoch's seeds are one number drawn from ``generator`` (which the trainer reseeds
    per epoch) plus the item's position in the epoch, so a sample drawn twice in an
    epoch (balanced sampling) is augmented twice, differently.
    """

    def __init__(self, order: Sampler[int], generator: torch.Generator) -> None:
        self.order, self.generator = order, generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = int(torch.randint(2**62, (), generator=self.generator))
        for position, index in enumerate(self.order):
            yield index, start + position

    def __len__(self) -> int:
        return len(self.order)


class SeededItems(Dataset):
    """``dataset[index]`` read under the seed that `SeededDraws` pairs with ``index``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded_random(seed):
            return self.dataset[index]


@contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """torch's CPU and Python's global random generators seeded with ``seed``, restored on exit
    (the training process's own draws, e.g. dropout, stay as they were)."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    balanced: bool | str = False,
    seed: int = 0,
    collate_fn: Callable | None = None,
    pin_memory: bool | None = None,
    shard: tuple[int, int] | None = None,
) -> DataLoader:
    """Data loader for training (shuffled, optionally class-balanced) or evaluation (in order).

    Args:
        dataset: a dataset; ``balanced`` needs its ``targets`` (see `medpeft.data.dataset.Dataset`).
        batch_size: samples per batch.
        train: shuffle, and drop the last partial batch when the dataset is larger than a batch.
        num_workers: loader worker processes.
        balanced: train only; ``True``: draw samples with replacement using
            `balanced_weights`; ``"oversample"``: `OversampleSampler` (the EI code's lists).
        seed: seeds the shuffling/sampling generator, which also draws the seeds of the
            training items' augmentation (`SeededDraws`); the trainer reseeds it per epoch
            (reproducible resume). Training workers are not persistent.
        collate_fn: batches items (default: torch's default collate).
        pin_memory: page-locked batches for fast copies to the GPU (default: when CUDA is
            available).
        shard: ``(rank, processes)`` to load for; default from ``torch.distributed`` when it
            is initialised, else one process. Training needs ``batch_size`` divisible by the
            processes.
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
        if balanced == "oversample":
            sampler = OversampleSampler(targets, generator)
        else:
            sampler = WeightedRandomSampler(balanced_weights(targets), len(dataset), generator=generator)
    if train:
        order = sampler if sampler is not None else RandomSampler(dataset, generator=generator)
        dataset, sampler = SeededItems(dataset), SeededDraws(order, generator)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    rank, processes = shard or _process_shard()
    if processes > 1:
        return _sharded_loader(dataset, batch_size, train, num_workers, sampler, generator,
                               collate_fn, pin_memory, rank, processes)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=generator,
        drop_last=train and len(dataset) > batch_size,
        persistent_workers=num_workers > 0 and not train,  # training workers restart per epoch
        pin_memory=pin_memory,
    )


class BatchShard(Sampler[list[int]]):
    """This process's items of every global batch: positions ``rank``, ``rank + processes``..."""

    def __init__(self, batches: BatchSampler, rank: int, processes: int) -> None:
        self.batches, self.rank, self.processes = batches, rank, processes

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.rank :: self.processes]

    def __len__(self) -> int:
        return len(self.batches)


class EvalShard(Sampler[int]):
    """A contiguous ``1/processes`` of ``range(total)``, padded with the last index so that
    every process has ``ceil(total / processes)`` items (the padding is trimmed on gather)."""

    def __init__(self, total: int, rank: int, processes: int) -> None:
        self.total = total
        self.per_process = math.ceil(total / processes)
        self.start = rank * self.per_process

    def __iter__(self) -> Iterator[int]:
        last = self.total - 1
        return (min(i, last) for i in range(self.start, self.start + self.per_process))

    def __len__(self) -> int:
        return self.per_process


def _process_shard() -> tuple[int, int]:
    """``(rank, processes)`` of ``torch.distributed`` when initialised, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sharded_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    sampler: Sampler | None,
    generator: torch.Generator,
    collate_fn: Callable | None,
    pin_memory: bool,
    rank: int,
    processes: int,
) -> DataLoader:
    """The loader of process ``rank`` of ``processes`` (see the module docstring)."""
    common = dict(num_workers=num_workers, collate_fn=collate_fn, generator=generator,
                  pin_memory=pin_memory, persistent_workers=num_workers > 0 and not train)
    if not train:
        shard = EvalShard(len(dataset), rank, processes)
        return DataLoader(dataset, batch_size=max(1, batch_size // processes), sampler=shard,
                          **common)
    if batch_size % processes or len(dataset) < batch_size:
        raise ConfigError(
            f"data.batch_size: {batch_size} is the global batch of {processes} processes; it "
            f"must be divisible by {processes} and at most the {len(dataset)} training samples"
        )
    batches = BatchSampler(sampler, batch_size, drop_last=len(dataset) > batch_size)
    return DataLoader(dataset, batch_sampler=BatchShard(batches, rank, processes), **common)


class SkippedSamples:
    """Samples left out of a run because they could not be read, each logged once."""

    def __init__(self) -> None:
        self.messages: dict[str, None] = {}  # insertion-ordered set

    def add(self, messages: Iterable[str]) -> None:
        """Record (and log, the first time) each skipped sample's message."""
        for message in messages:
            if message not in self.messages:
                self.messages[message] = None
                log.warning(f"warning: skipped an unreadable sample (train.on_bad_sample=skip): {message}")

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[str]:
        return iter(self.messages)


class SkippingLoader:
    """Iterates a loader, moving each batch's ``inputs["skipped"]`` into ``skipped``.

    Batches whose every sample was skipped are left out, so an epoch may yield fewer
    than ``len(self)`` batches. Other attributes (``generator``, ``dataset``...) are the
    wrapped loader's.
    """

    def __init__(self, loader: DataLoader, skipped: SkippedSamples) -> None:
        self.loader = loader
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[dict, torch.Tensor]]:
        for inputs, targets in self.loader:
            self.skipped.add(inputs.pop("skipped", ()))
            if len(targets):
                yield inputs, targets

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)
