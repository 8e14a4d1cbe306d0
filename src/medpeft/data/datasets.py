"""Single-modality image classification dataset and its data loader.

Items are ``(Tensor[3, H, W], target)``: a LongTensor scalar class index
(multiclass) or a FloatTensor[C] of 0/1 (multilabel), so a default-collated
batch is ``(Tensor[B, 3, H, W], LongTensor[B] | FloatTensor[B, C])``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from medpeft.data.imageio import load_image
from medpeft.data.manifest import Manifest, Sample, Target, strata
from medpeft.errors import ConfigError, DataError
from medpeft.tasks import check_task

Transform = Callable[[Image.Image], torch.Tensor]


class ImageClassificationDataset(Dataset):
    """Images and labels of one split.

    Args:
        samples: the split's samples.
        classes: class names in head order.
        task: ``multiclass`` or ``multilabel``.
        transform: PIL image -> ``Tensor[3, H, W]`` (e.g. `build_transform`).
        loader: path -> PIL image.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        task: str,
        transform: Transform,
        loader: Callable[[str], Image.Image] = load_image,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.task = check_task(task)
        self.transform = transform
        self.loader = loader
        for sample in self.samples:
            _check_target(sample, len(self.classes), self.task)

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, split: str, transform: Transform
    ) -> ImageClassificationDataset:
        """Dataset of one split of a manifest."""
        return cls(manifest.split(split), manifest.classes, manifest.task, transform)

    @property
    def targets(self) -> list[Target]:
        """Targets of all samples, without loading any image."""
        return [s.target for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = self.transform(self.loader(sample.path))
        if self.task == "multiclass":
            return image, torch.tensor(sample.target, dtype=torch.long)
        return image, torch.tensor(sample.target, dtype=torch.float32)


def _check_target(sample: Sample, num_classes: int, task: str) -> None:
    target = sample.target
    if task == "multiclass":
        ok = isinstance(target, int) and 0 <= target < num_classes
    else:
        ok = isinstance(target, tuple) and len(target) == num_classes
    if not ok:
        raise DataError(
            f"{sample.where or sample.path}: target {target!r} does not fit a {task} task "
            f"with {num_classes} classes"
        )


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
        dataset: a dataset; ``balanced`` needs its ``targets`` (see `ImageClassificationDataset`).
        batch_size: samples per batch.
        train: shuffle, and drop the last partial batch when the dataset is larger than a batch.
        num_workers: loader worker processes.
        balanced: train only; draw samples with replacement using `balanced_weights`.
        seed: seeds the shuffling/sampling generator (and the workers' base seed).
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
        persistent_workers=num_workers > 0,
    )
