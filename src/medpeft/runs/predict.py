"""``medpeft predict``: class scores of new samples from a saved adapter of any method.

Inputs are image files (an adapter with one image modality) or a CSV manifest with
one column per modality of the adapter (empty cell = missing modality) and an
optional ``id`` column. Samples are read exactly as in training: the adapter
records its preprocessing, missing-image policy, side-by-side combining and
tokenizer. Scores are softmax (multiclass) or sigmoid (multilabel) probabilities.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from torch import nn

from medpeft.adapters.config import AdapterConfig
from medpeft.adapters.io import load_adapter
from medpeft.data.dataset import Dataset
from medpeft.data.loader import build_loader
from medpeft.data.records import Record
from medpeft.data.sources.csv import read_inputs
from medpeft.errors import ConfigError
from medpeft.runs.data import image_transforms, make_collate
from medpeft.train import predict
from medpeft.train.settings import resolve_device

UNKNOWN_TARGET = 0  # records to predict carry no label; the loader's targets are ignored


@dataclass
class Predictions:
    """Per-sample probabilities in label order."""

    ids: list[str]
    labels: list[str]
    scores: list[list[float]]
    task: str

    def write_csv(self, out: TextIO) -> None:
        """``id``, one column per label, and the prediction (argmax, or labels > 0.5)."""
        writer = csv.writer(out)
        writer.writerow(["id", *self.labels, "prediction"])
        for sample_id, row in zip(self.ids, self.scores):
            writer.writerow([sample_id, *(f"{p:.4f}" for p in row), self.decision(row)])

    def decision(self, row: Sequence[float]) -> str:
        """The predicted class, or the ``|``-joined labels above 0.5 (multilabel)."""
        if self.task == "multilabel":
            return "|".join(label for label, p in zip(self.labels, row) if p > 0.5)
        return self.labels[max(range(len(row)), key=row.__getitem__)]


def predict_files(
    adapter: str | Path,
    paths: Sequence[str],
    weights: str | None = None,
    pretrained: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
    allow_random_backbone: bool = False,
) -> Predictions:
    """Scores of image files with an adapter of one image modality."""
    model, config = load_adapter(adapter, weights=weights, pretrained=pretrained,
                                 allow_random_backbone=allow_random_backbone)
    if len(config.modalities) != 1:
        raise ConfigError(
            f"{adapter} reads modalities {list(config.modalities)}: pass a manifest with one "
            "column per modality (--manifest) instead of image files"
        )
    modality = next(iter(config.modalities))
    records = [Record(str(p), {modality: (str(p),)}, UNKNOWN_TARGET) for p in paths]
    return _predict(model, config, records, batch_size, device, progress)


def predict_manifest(
    adapter: str | Path,
    manifest: str | Path,
    weights: str | None = None,
    pretrained: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
    root: str | Path | None = None,
    allow_random_backbone: bool = False,
) -> Predictions:
    """Scores of the rows of a manifest with one column per modality of the adapter."""
    model, config = load_adapter(adapter, weights=weights, pretrained=pretrained,
                                 allow_random_backbone=allow_random_backbone)
    records = read_inputs(manifest, config.modalities, root=root)
    return _predict(model, config, records, batch_size, device, progress)


def _predict(
    model: nn.Module,
    config: AdapterConfig,
    records: list[Record],
    batch_size: int,
    device: str,
    progress: bool,
) -> Predictions:
    """Scores of unlabelled records (read as in training, genuine gaps only)."""
    model.to(resolve_device(device)).eval()
    inputs, kinds = config.inputs, config.modalities
    combine = inputs.get("combine") or {}
    transforms = image_transforms(kinds, combine, config.preprocessing, augment=False)
    dataset = Dataset(
        records, tuple(kinds), kinds, transforms, None, inputs.get("missing_image", "ones"), combine
    )
    collate = make_collate(kinds, inputs.get("tokenizer", ""), inputs.get("max_text_len") or 40)
    loader = build_loader(dataset, batch_size, train=False, collate_fn=collate)
    scores = predict(model, loader, config.task, progress=progress).tolist() if records else []
    return Predictions([r.id for r in records], config.labels, scores, config.task)
