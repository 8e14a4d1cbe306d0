"""Deterministic synthetic multimodal task where each modality carries part of the label.

Every sample has ``bits_per_modality`` random bits per modality. Modality ``i``
shows only its own bits, so losing a modality loses information:

* image modality: bit ``j`` sets the brightness of horizontal band ``j`` (bright
  for 1, dark for 0) under Gaussian noise, tinted by modality;
* text modality: words ``sig<j>`` + ``yes``/``no`` (see `text_vocabulary`).

Labels: ``multiclass`` encodes all bits as one class (bit ``k`` of the class
index, modality-major, so with modalities ``a``, ``b`` and one bit each: bit 0
is visible only in ``a`` and bit 1 only in ``b``; 4 classes); ``multilabel``
makes each bit one label. Data stay in memory (`SyntheticMultiModal.dataset`,
fast) or are written as PNG files plus ``manifest.csv`` (`SyntheticMultiModal.write`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from medpeft.data.dataset import Item, check_missing_image, fill_missing_image
from medpeft.data.missing import MissingTable, effective_presence
from medpeft.data.records import check_modalities
from medpeft.data.splits import seeded_split
from medpeft.tasks import check_task

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
TINTS = ((1.0, 0.6, 0.6), (0.6, 1.0, 0.6), (0.6, 0.6, 1.0))


def text_vocabulary(bits_per_modality: int = 1) -> list[str]:
    """Every word the synthetic text modality uses (for a test tokenizer's vocab)."""
    return ["yes", "no", *(f"sig{j}" for j in range(bits_per_modality))]


@dataclass
class SyntheticMultiModal:
    """In-memory synthetic samples.

    Attributes:
        modalities: modality names, in order.
        kinds: modality -> ``"image"`` | ``"text"``.
        images: image modality -> uint8 Tensor[N, 3, S, S].
        texts: text modality -> N strings.
        bits: Bool Tensor[N, M * bits_per_modality], modality-major.
        targets: LongTensor[N] (multiclass) or FloatTensor[N, C] (multilabel).
        label_names: class or label names.
        task: ``"multiclass"`` or ``"multilabel"``.
        splits: ``train``/``val``/``test`` per sample.
    """

    modalities: tuple[str, ...]
    kinds: dict[str, str]
    images: dict[str, torch.Tensor]
    texts: dict[str, list[str]]
    bits: torch.Tensor
    targets: torch.Tensor
    label_names: list[str]
    task: str
    splits: list[str]

    def __len__(self) -> int:
        return len(self.splits)

    def indices(self, split: str | None = None) -> list[int]:
        """Sample indices of one split (all samples if None)."""
        return [i for i, s in enumerate(self.splits) if split is None or s == split]

    def ids(self, split: str | None = None) -> list[str]:
        """Sample ids of one split: the keys a missing table for it needs."""
        return [str(i) for i in self.indices(split)]

    @property
    def label_columns(self) -> list[str]:
        """Label columns of the written manifest."""
        return self.label_names if self.task == "multilabel" else ["label"]

    def dataset(
        self,
        split: str | None = None,
        missing_table: MissingTable | None = None,
        missing_image: str = "ones",
        mean: float = 0.5,
        std: float = 0.5,
    ) -> SyntheticTensorDataset:
        """A map-style dataset of one split (all if None) yielding `medpeft.data.dataset.Dataset` items.

        ``missing_table`` is keyed by `ids` (e.g. ``make_missing_table(data.ids("test"), ...)``).
        """
        return SyntheticTensorDataset(
            self, self.indices(split), missing_table, missing_image, mean, std
        )

    def write(self, folder: str | Path) -> Path:
        """Write PNGs to ``folder/<modality>/`` and return ``folder/manifest.csv``."""
        folder = Path(folder)
        columns = ["id", *self.modalities, *self.label_columns, "split"]
        rows = []
        for i in range(len(self)):
            row = {"id": str(i), "split": self.splits[i]}
            for m in self.modalities:
                row[m] = self.texts[m][i] if m in self.texts else self._write_png(folder, m, i)
            row.update(self._label_cells(i))
            rows.append(row)
        manifest = folder / "manifest.csv"
        with manifest.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return manifest

    def _write_png(self, folder: Path, m: str, i: int) -> str:
        relative = Path(m) / f"{i:05d}.png"
        (folder / m).mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.images[m][i].permute(1, 2, 0).numpy()).save(folder / relative)
        return relative.as_posix()

    def _label_cells(self, i: int) -> dict[str, str]:
        if self.task == "multiclass":
            return {"label": self.label_names[int(self.targets[i])]}
        return {name: str(int(v)) for name, v in zip(self.label_names, self.targets[i].tolist())}


class SyntheticTensorDataset(Dataset):
    """Normalised in-memory items of a `SyntheticMultiModal`, missing table applied."""

    def __init__(
        self,
        data: SyntheticMultiModal,
        indices: Sequence[int],
        missing_table: MissingTable | None,
        missing_image: str,
        mean: float,
        std: float,
    ) -> None:
        self.data = data
        self.indices = list(indices)
        self.missing_table = missing_table
        self.missing_image = check_missing_image(missing_image)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Item:
        i = self.indices[index]
        data = self.data
        present = tuple(True for _ in data.modalities)
        if self.missing_table is not None:
            present = effective_presence(self.missing_table.presence(str(i)), present)
        inputs: dict = {"images": {}, "present": torch.tensor(present, dtype=torch.bool)}
        for keep, m in zip(present, data.modalities):
            if m in data.texts:
                inputs["text"] = data.texts[m][i] if keep else ""
            elif keep:
                inputs["images"][m] = (data.images[m][i].float() / 255 - self.mean) / self.std
            else:
                shape = data.images[m].shape[1:]
                inputs["images"][m] = fill_missing_image(shape, self.missing_image)
        return inputs, data.targets[i]


def _render_image(
    bits: np.ndarray, size: int, tint: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """uint8 [3, size, size]: band ``j`` bright if ``bits[j]`` else dark, plus noise."""
    plane = rng.normal(0.0, 0.12, (size, size))
    bands = np.array_split(np.arange(size), len(bits))
    for bit, rows in zip(bits, bands):
        plane[rows] += 0.75 if bit else 0.25
    image = np.clip(plane[None] * np.asarray(tint)[:, None, None], 0.0, 1.0)
    return (image * 255).round().astype(np.uint8)


def _render_text(bits: np.ndarray) -> str:
    return " ".join(f"sig{j} {'yes' if bit else 'no'}" for j, bit in enumerate(bits))


def _targets(
    bits: np.ndarray, task: str, modalities: Sequence[str], per: int
) -> tuple[torch.Tensor, list[str]]:
    if task == "multilabel":
        names = [f"{m}_{j}" for m in modalities for j in range(per)]
        return torch.from_numpy(bits.astype(np.float32)), names
    index = (bits.astype(np.int64) << np.arange(bits.shape[1])).sum(axis=1)
    return torch.from_numpy(index), [f"c{c}" for c in range(2 ** bits.shape[1])]


def make_synthetic_multimodal(
    n: int = 256,
    modalities: Sequence[str] = ("a", "b"),
    kinds: Mapping[str, str] | None = None,
    bits_per_modality: int = 1,
    task: str = "multiclass",
    img_size: int = 32,
    split_fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = 0,
) -> SyntheticMultiModal:
    """Generate the task (same arguments -> identical data).

    Args:
        n: number of samples.
        modalities: modality names; each carries ``bits_per_modality`` bits.
        kinds: modality -> ``"image"``/``"text"`` (default: all images).
        bits_per_modality: label bits visible in each modality.
        task: ``"multiclass"`` (2**(M*bits) classes) or ``"multilabel"`` (M*bits labels).
        img_size: image side in pixels.
        split_fractions: train/val/test fractions.
        seed: random seed.
    """
    kinds = dict(kinds or {m: "image" for m in modalities})
    check_modalities(modalities, kinds)
    check_task(task)
    rng = np.random.default_rng(seed)
    per = bits_per_modality
    bits = rng.integers(0, 2, (n, len(modalities) * per)).astype(bool)
    images, texts = {}, {}
    for i, m in enumerate(modalities):
        own = bits[:, i * per : (i + 1) * per]
        if kinds[m] == "text":
            texts[m] = [_render_text(b) for b in own]
        else:
            tint = TINTS[i % len(TINTS)]
            images[m] = torch.from_numpy(
                np.stack([_render_image(b, img_size, tint, rng) for b in own])
            )
    targets, names = _targets(bits, task, modalities, per)
    splits = seeded_split(n, split_fractions, seed)
    return SyntheticMultiModal(
        tuple(modalities),
        kinds,
        images,
        texts,
        torch.from_numpy(bits),
        targets,
        names,
        task,
        splits,
    )
