"""``medpeft predict``: class scores of new samples from a saved adapter of any method.

Inputs are image files (an adapter with one image modality) or a CSV manifest with
one column per modality of the adapter (empty cell = missing modality) and an
optional ``id`` column. Samples are read exactly as in training: the adapter
records its preprocessing, missing-image policy, side-by-side combining and
tokenizer. Scores are softmax (multiclass) or sigmoid (multilabel) probabilities.

With several adapters (:func:`predict_tasks`) the adapters share one backbone in
an :class:`~medpeft.bank.AdapterBank`: a manifest's ``task`` column names each
row's task (image files go through every task), and every batch mixes tasks in
one forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from torch import nn
from torch.utils.data import DataLoader

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import load_adapter
from medpeft.bank import AdapterBank, TaskInfo
from medpeft.data.csvfile import SpreadsheetWriter, check_columns, read_csv_rows
from medpeft.data.dataset import Dataset
from medpeft.data.imageio import ReadOptions
from medpeft.data.loader import build_loader
from medpeft.data.records import Record
from medpeft.data.sources.csv import read_inputs
from medpeft.errors import ConfigError, DataError, did_you_mean
from medpeft.runs.data import image_transforms, make_collate
from medpeft.train import predict
from medpeft.train.settings import resolve_device

UNKNOWN_TARGET = 0  # records to predict carry no label; the loader's targets are ignored
TASK_COLUMN = "task"  # manifest column naming each row's task (several adapters)


@dataclass
class Predictions:
    """Per-sample probabilities in label order."""

    ids: list[str]
    labels: list[str]
    scores: list[list[float]]
    task: str

    def write_csv(self, out: TextIO) -> None:
        """``id``, one column per label, and the prediction (argmax, or labels > 0.5)."""
        writer = SpreadsheetWriter(out)
        writer.writerow(["id", *self.labels, "prediction"])
        for sample_id, row in zip(self.ids, self.scores):
            writer.writerow([sample_id, *(f"{p:.4f}" for p in row), self.decision(row)])

    def decision(self, row: Sequence[float]) -> str:
        """The predicted class, or the ``|``-joined labels above 0.5 (multilabel)."""
        return decision(self.labels, self.task, row)


def decision(labels: Sequence[str], task: str, row: Sequence[float]) -> str:
    """The predicted class, or the ``|``-joined labels above 0.5 (multilabel)."""
    if task == "multilabel":
        return "|".join(label for label, p in zip(labels, row) if p > 0.5)
    return labels[max(range(len(row)), key=row.__getitem__)]


@dataclass
class TaskPredictions:
    """Per-sample probabilities of samples of several tasks (each in its task's label order)."""

    ids: list[str]
    tasks: list[str]
    labels: dict[str, list[str]]
    kinds: dict[str, str]
    scores: list[list[float]]

    def write_csv(self, out: TextIO) -> None:
        """``id``, ``task``, ``prediction`` and ``scores`` (``label=p`` pairs joined by ``;``)."""
        writer = SpreadsheetWriter(out)
        writer.writerow(["id", TASK_COLUMN, "prediction", "scores"])
        for sample_id, task, row in zip(self.ids, self.tasks, self.scores):
            labels = self.labels[task]
            pairs = ";".join(f"{label}={p:.4f}" for label, p in zip(labels, row))
            writer.writerow([sample_id, task, decision(labels, self.kinds[task], row), pairs])


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
    loader = records_loader(config, records, batch_size)
    scores = predict(model, loader, config.task, progress=progress).tolist() if records else []
    return Predictions([r.id for r in records], config.labels, scores, config.task)


def records_loader(config: AdapterConfig, records: list[Record], batch_size: int) -> DataLoader:
    """A loader of ``records`` read as the adapter's training read them (no augmentation)."""
    inputs, kinds = config.inputs, config.modalities
    combine = inputs.get("combine") or {}
    transforms = image_transforms(kinds, combine, config.preprocessing, augment=False)
    dataset = Dataset(
        records, tuple(kinds), kinds, transforms, None, inputs.get("missing_image", "ones"), combine,
        read_options=ReadOptions(**inputs.get("read", {})),
    )
    collate = make_collate(kinds, inputs.get("tokenizer", ""), inputs.get("max_text_len") or 40)
    return build_loader(dataset, batch_size, train=False, collate_fn=collate)


def predict_tasks(
    adapters: Mapping[str, str | Path],
    paths: Sequence[str] = (),
    manifest: str | Path | None = None,
    root: str | Path | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    allow_random_backbone: bool = False,
) -> TaskPredictions:
    """Scores of samples of several tasks on one backbone, in mixed-task batches.

    Args:
        adapters: Task name -> adapter folder (all trained on one backbone).
        paths: Image files, each scored by every task.
        manifest: CSV with a ``task`` column and one column per modality (optional ``id``).
        root: Folder of the manifest's relative paths (default: its folder).
    """
    bank = AdapterBank.from_folders(
        adapters, device=resolve_device(device), weights=weights, pretrained=pretrained,
        allow_random_backbone=allow_random_backbone,
    )
    infos = {t.name: t for t in bank.tasks()}
    if manifest is not None:
        samples = _manifest_samples(manifest, root, infos)
    else:
        samples = [(str(p), task, {infos[task].modalities[0]: str(p)}) for p in paths for task in infos]
    scores: list[list[float]] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        tensors = [bank.preprocess(task, files) for _, task, files in batch]
        scores += [p.tolist() for p in bank.predict([task for _, task, _ in batch], tensors)]
    return TaskPredictions(
        [s[0] for s in samples], [s[1] for s in samples],
        {n: t.labels for n, t in infos.items()}, {n: t.task for n, t in infos.items()}, scores,
    )


def _manifest_samples(
    manifest: str | Path, root: str | Path | None, infos: Mapping[str, TaskInfo]
) -> list[tuple[str, str, dict[str, str]]]:
    """``(id, task, {modality: file})`` of each manifest row; DataError for an unknown task."""
    modalities = {m: "image" for info in infos.values() for m in info.modalities}
    header, rows = read_csv_rows(manifest)
    check_columns(manifest, header, [TASK_COLUMN])
    records = read_inputs(manifest, modalities, root=root)
    samples = []
    for record, (_, row) in zip(records, rows):
        task = row[TASK_COLUMN].strip()
        if task not in infos:
            raise DataError(
                f"{record.where}: task {task!r}{did_you_mean(task, infos)} is none of the "
                f"adapters given ({sorted(infos)})"
            )
        files = {m: v[0] for m, v in record.values.items() if v and m in infos[task].modalities}
        samples.append((record.id, task, files))
    return samples
