"""``medpeft predict``: class scores of new samples from a saved adapter of any method.

Inputs are image files or folders of them (an adapter with one image modality; a
folder stands for the image files under it, by extension) or a CSV manifest with
one column per modality of the adapter (empty cell = missing modality) and an
optional ``id`` column. Samples are read exactly as in training: the adapter
records its preprocessing, missing-image policy, side-by-side combining and
tokenizer. Scores are softmax (multiclass) or sigmoid (multilabel) probabilities.

A sample with an image that cannot be read gets no scores but its error (status
``error`` in the CSV), and the others are predicted all the same.

With several adapters (:func:`predict_tasks`) the adapters share one backbone in
an :class:`~medpeft.bank.AdapterBank`: a manifest's ``task`` column names each
row's task (image files go through every task), and every batch mixes tasks in
one forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch import nn
from torch.utils.data import DataLoader

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import load_adapter
from medpeft.bank import AdapterBank, TaskInfo
from medpeft.data.csvfile import SpreadsheetWriter, check_columns, read_csv_rows
from medpeft.data.dataset import Dataset
from medpeft.data.imageio import SUPPORTED_SUFFIXES, ReadOptions
from medpeft.data.loader import build_loader
from medpeft.data.records import Record
from medpeft.data.scan import unreadable_images
from medpeft.data.sources.csv import read_inputs
from medpeft.data.sources.folder import image_files
from medpeft.data.transforms import image_transforms
from medpeft.errors import ConfigError, DataError, did_you_mean
from medpeft.frozen_dtype import inference_autocast
from medpeft.runs.data import make_collate
from medpeft.train import predict
from medpeft.train.settings import resolve_device

UNKNOWN_TARGET = 0  # records to predict carry no label; the loader's targets are ignored
TASK_COLUMN = "task"  # manifest column naming each row's task (several adapters)
STATUS_COLUMNS = ("status", "error")  # "ok" and "", or "error" and why the sample has no scores

Scores = list[float] | None  # one sample's probabilities; None: it could not be read
Sample = tuple[str, str, dict[str, str]]  # id, task, {modality: file}


@dataclass
class Predictions:
    """Per-sample probabilities in label order (None, and an error, for an unreadable sample)."""

    ids: list[str]
    labels: list[str]
    scores: list[Scores]
    task: str
    errors: list[str] = field(default_factory=list)  # per sample; "" when it has scores

    def __post_init__(self) -> None:
        self.errors = self.errors or [""] * len(self.ids)

    def write_csv(self, out: TextIO) -> None:
        """``id``, one column per label, the prediction (argmax, or labels > 0.5), ``status`` and
        ``error`` (an unreadable sample: empty scores, status ``error`` and why)."""
        writer = SpreadsheetWriter(out)
        writer.writerow(["id", *self.labels, "prediction", *STATUS_COLUMNS])
        for sample_id, row, error in zip(self.ids, self.scores, self.errors):
            if row is None:
                writer.writerow([sample_id, *[""] * len(self.labels), "", *status_cells(error)])
            else:
                writer.writerow([sample_id, *(f"{p:.4f}" for p in row), self.decision(row), *status_cells(error)])

    def failures(self) -> list[tuple[str, str]]:
        """``(id, error)`` of each sample without scores."""
        return _failed(self.ids, self.errors)

    def decision(self, row: Sequence[float]) -> str:
        """The predicted class, or the ``|``-joined labels above 0.5 (multilabel)."""
        return decision(self.labels, self.task, row)


def status_cells(error: str) -> tuple[str, str]:
    """The ``status`` and ``error`` cells of a sample."""
    return ("error", error) if error else ("ok", "")


def _failed(ids: Sequence[str], errors: Sequence[str]) -> list[tuple[str, str]]:
    """``(id, error)`` of the samples with an error."""
    return [(sample_id, error) for sample_id, error in zip(ids, errors) if error]


def decision(labels: Sequence[str], task: str, row: Sequence[float]) -> str:
    """The predicted class, or the ``|``-joined labels above 0.5 (multilabel)."""
    if task == "multilabel":
        return "|".join(label for label, p in zip(labels, row) if p > 0.5)
    return labels[max(range(len(row)), key=row.__getitem__)]


@dataclass
class TaskPredictions:
    """Per-sample probabilities of samples of several tasks (each in its task's label order;
    None, and an error, for an unreadable sample)."""

    ids: list[str]
    tasks: list[str]
    labels: dict[str, list[str]]
    kinds: dict[str, str]
    scores: list[Scores]
    errors: list[str] = field(default_factory=list)  # per sample; "" when it has scores

    def __post_init__(self) -> None:
        self.errors = self.errors or [""] * len(self.ids)

    def write_csv(self, out: TextIO) -> None:
        """``id``, ``task``, ``prediction``, ``scores`` (``label=p`` pairs joined by ``;``),
        ``status`` and ``error``."""
        writer = SpreadsheetWriter(out)
        writer.writerow(["id", TASK_COLUMN, "prediction", "scores", *STATUS_COLUMNS])
        for sample_id, task, row, error in zip(self.ids, self.tasks, self.scores, self.errors):
            if row is None:
                writer.writerow([sample_id, task, "", "", *status_cells(error)])
                continue
            labels = self.labels[task]
            pairs = ";".join(f"{label}={p:.4f}" for label, p in zip(labels, row))
            writer.writerow([sample_id, task, decision(labels, self.kinds[task], row), pairs, *status_cells(error)])

    def failures(self) -> list[tuple[str, str]]:
        """``(id, error)`` of each sample without scores."""
        return _failed(self.ids, self.errors)


def predict_files(
    adapter: str | Path,
    paths: Sequence[str],
    weights: str | None = None,
    pretrained: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
    frozen_dtype: torch.dtype = torch.float32,
) -> Predictions:
    """Scores of image files (a folder: the image files under it) with an adapter of one image
    modality (``frozen_dtype``: the backbone's frozen layers' dtype, :func:`load_adapter`)."""
    model, config = load_adapter(adapter, weights=weights, pretrained=pretrained,
                                 allow_random_backbone=allow_random_backbone,
                                 allow_other_weights=allow_other_weights, frozen_dtype=frozen_dtype)
    if len(config.modalities) != 1:
        raise ConfigError(
            f"{adapter} reads modalities {list(config.modalities)}: pass a manifest with one "
            "column per modality (--manifest) instead of image files"
        )
    modality = next(iter(config.modalities))
    records = [Record(p, {modality: (p,)}, UNKNOWN_TARGET) for p in image_inputs(paths)]
    return _predict(model, config, records, batch_size, device, progress, frozen_dtype)


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
    allow_other_weights: bool = False,
    frozen_dtype: torch.dtype = torch.float32,
) -> Predictions:
    """Scores of the rows of a manifest with one column per modality of the adapter."""
    model, config = load_adapter(adapter, weights=weights, pretrained=pretrained,
                                 allow_random_backbone=allow_random_backbone,
                                 allow_other_weights=allow_other_weights, frozen_dtype=frozen_dtype)
    records = read_inputs(manifest, config.modalities, root=root)
    return _predict(model, config, records, batch_size, device, progress, frozen_dtype)


def _predict(
    model: nn.Module,
    config: AdapterConfig,
    records: list[Record],
    batch_size: int,
    device: str,
    progress: bool,
    frozen_dtype: torch.dtype,
) -> Predictions:
    """Scores of unlabelled records (read as in training, genuine gaps only); a record with an
    image that does not decode gets its first error instead, the others are predicted. Frozen
    layers in a low dtype run under autocast to it (:func:`inference_autocast`), fp32 ones under
    fp16 autocast on CUDA."""
    errors: dict[int, str] = {}
    for index, _, error in unreadable_images(records, config.modalities, "input", progress, read_options(config)):
        errors.setdefault(index, error)
    readable = [r for i, r in enumerate(records) if i not in errors]
    model.to(resolve_device(device)).eval()
    loader = records_loader(config, readable, batch_size)
    amp = inference_autocast(frozen_dtype) or torch.float16
    scores = predict(model, loader, config.task, progress=progress, amp_dtype=amp).tolist() if readable else []
    rows, messages = merged(len(records), errors, scores)
    return Predictions([r.id for r in records], config.labels, rows, config.task, messages)


def merged(count: int, errors: Mapping[int, str], scores: Iterable[list[float]]) -> tuple[list[Scores], list[str]]:
    """Per-sample scores (None where ``errors`` has the sample) and errors of ``count`` samples,
    from the ``scores`` of the others in order."""
    given = iter(scores)
    rows = [None if i in errors else next(given) for i in range(count)]
    return rows, [errors.get(i, "") for i in range(count)]


def image_inputs(paths: Sequence[str | Path]) -> list[str]:
    """``paths`` with each folder replaced by the image files under it (recursively, by extension)."""
    files: list[str] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(str(path))
            continue
        found = image_files(path)
        if not found:
            raise DataError(f"{path}: no image files in the folder or below (expected {', '.join(SUPPORTED_SUFFIXES)})")
        files += map(str, found)
    return files


def read_options(config: AdapterConfig) -> ReadOptions:
    """How the adapter's training read volumes and wide-range images."""
    return ReadOptions(**config.inputs.get("read", {}))


def records_loader(config: AdapterConfig, records: list[Record], batch_size: int) -> DataLoader:
    """A loader of ``records`` read as the adapter's training read them (no augmentation)."""
    inputs, kinds = config.inputs, config.modalities
    combine = inputs.get("combine") or {}
    transforms = image_transforms(kinds, combine, config.preprocessing, augment=False)
    dataset = Dataset(
        records, tuple(kinds), kinds, transforms, None, inputs.get("missing_image", "ones"), combine,
        read_options=read_options(config),
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
    allow_other_weights: bool = False,
    frozen_dtype: torch.dtype = torch.float32,
) -> TaskPredictions:
    """Scores of samples of several tasks on one backbone, in mixed-task batches.

    A sample whose image does not decode gets its error instead of scores.

    Args:
        adapters: Task name -> adapter folder (all trained on one backbone).
        paths: Image files (a folder: the image files under it), each scored by every task.
        manifest: CSV with a ``task`` column and one column per modality (optional ``id``).
        root: Folder of the manifest's relative paths (default: its folder).
        frozen_dtype: dtype of the shared backbone's frozen layers (:meth:`AdapterBank.from_folders`).
    """
    bank = AdapterBank.from_folders(
        adapters, device=resolve_device(device), weights=weights, pretrained=pretrained,
        allow_random_backbone=allow_random_backbone, allow_other_weights=allow_other_weights,
        frozen_dtype=frozen_dtype,
    )
    infos = {t.name: t for t in bank.tasks()}
    if manifest is not None:
        samples = _manifest_samples(manifest, root, infos)
    else:
        samples = [(p, task, {infos[task].modalities[0]: p}) for p in image_inputs(paths) for task in infos]
    scores: list[list[float]] = []
    errors: dict[int, str] = {}
    for start in range(0, len(samples), batch_size):
        readable = _preprocessed(bank, samples, range(start, min(start + batch_size, len(samples))), errors)
        if readable:
            tasks, tensors = zip(*readable)
            scores += [p.tolist() for p in bank.predict(list(tasks), list(tensors))]
    rows, messages = merged(len(samples), errors, scores)
    return TaskPredictions(
        [s[0] for s in samples], [s[1] for s in samples],
        {n: t.labels for n, t in infos.items()}, {n: t.task for n, t in infos.items()}, rows, messages,
    )


def _preprocessed(
    bank: AdapterBank, samples: Sequence[Sample], indices: Iterable[int], errors: dict[int, str]
) -> list[tuple[str, dict]]:
    """``(task, tensors)`` of the samples at ``indices`` that decode; the others' errors go to ``errors``."""
    readable = []
    for index in indices:
        _, task, files = samples[index]
        try:
            readable.append((task, bank.preprocess(task, files)))
        except DataError as error:  # an unreadable image: this sample only
            errors[index] = str(error)
    return readable


def _manifest_samples(
    manifest: str | Path, root: str | Path | None, infos: Mapping[str, TaskInfo]
) -> list[Sample]:
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
