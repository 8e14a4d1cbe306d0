"""The synthetic multimodal task as a `Source`: written as PNGs + manifest, read back."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medpeft.data.records import Source
from medpeft.data.sources.csv import csv_source
from medpeft.data.synthetic_multimodal import make_synthetic_multimodal


def synthetic_source(
    folder: str | Path,
    modalities: Mapping[str, str],
    num_samples: int,
    bits_per_modality: int = 1,
    task: str = "multiclass",
    img_size: int = 32,
    seed: int = 0,
) -> Source:
    """Generate the task of `make_synthetic_multimodal`, write it under ``folder``, read it back.

    Args:
        folder: output folder of the PNGs and ``manifest.csv``.
        modalities: modality -> ``"image"``/``"text"``, in order.
        num_samples: number of samples.
        bits_per_modality: label bits visible in each modality.
        task: ``"multiclass"`` or ``"multilabel"``.
        img_size: image side in pixels.
        seed: seed of the data and their split.
    """
    data = make_synthetic_multimodal(
        num_samples, tuple(modalities), modalities, bits_per_modality, task, img_size, seed=seed
    )
    manifest = data.write(folder)
    label_cols = data.label_names if task == "multilabel" else None
    return csv_source(
        manifest, modalities=modalities, label_cols=label_cols, task=task, classes=data.label_names
    )
