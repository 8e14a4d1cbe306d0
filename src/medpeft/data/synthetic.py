"""Deterministic synthetic "x-ray" dataset with a learnable signal, for demos and tests.

Each image is a noisy grey chest-like picture: a vertical intensity gradient,
two darker "lung" fields and Gaussian noise. Findings are pairs of bright blobs,
one in each lung, whose row and brightness identify the finding (two cues: a
position a ViT learns from its position embeddings, and an intensity even a
linear probe on frozen features picks up). Pairs are mirror symmetric, so
horizontal flips keep the label. Multiclass: the first class shows nothing
(the "normal" class), class ``k >= 1`` shows finding ``k - 1`` (top to bottom).
Multilabel: label ``k`` shows finding ``k``; a sample without labels is normal.
Rows span the middle 60% of the height: meant for up to about 8 findings at
32-64 px. The same arguments always give byte-identical files.

`make_pairs_dataset` is a harder multiclass task (`PAIR_CLASSES`) on the same
pictures, where the label is a spatial relation: no blob, one blob in one lung,
one blob per lung at the same height, or at clearly different heights. Rows and
brightness are random, so neither position nor intensity alone gives the class.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medpeft.atomic import atomic_write_text
from medpeft.data.splits import stratified_split
from medpeft.errors import ConfigError
from medpeft.tasks import check_task

MULTILABEL_RATE = 0.3
NOISE = 0.06
SIGMA = 1.0 / 12
PAIR_CLASSES = ("normal", "one_sided", "symmetric", "asymmetric")
ASYMMETRY = 0.22  # least row difference (fraction of the height) of an asymmetric pair


def make_synthetic_dataset(
    out_dir: str | Path,
    classes: Sequence[str] = ("normal", "lesion"),
    n_per_class: int = 20,
    img_size: int = 32,
    seed: int = 0,
    task: str = "multiclass",
    splits: Sequence[float] = (0.6, 0.2, 0.2),
) -> Path:
    """Write PNG images and ``manifest.csv`` (image, label, split) under ``out_dir``.

    Args:
        out_dir: output folder (created if needed).
        classes: class (multiclass) or label (multilabel) names.
        n_per_class: images per class; multilabel: ``n_per_class * len(classes)`` images,
            each label positive with probability 0.3 (the first image has the first two
            labels, so the manifest reads as multi-label).
        img_size: image height and width in pixels.
        seed: random seed of labels, images and the split.
        task: ``multiclass`` or ``multilabel``.
        splits: train/val/test fractions of the seeded stratified split.

    Returns:
        Path of the manifest, readable by `medpeft.data.sources.csv_source`.
    """
    check_task(task)
    if len(classes) < 2 or len(set(classes)) != len(classes) or any("|" in c for c in classes):
        raise ConfigError(f"need two or more distinct class names without '|', got {classes}")
    if n_per_class < 1 or img_size < 8:
        raise ConfigError(f"need n_per_class >= 1 and img_size >= 8, got {n_per_class}, {img_size}")
    rng = np.random.default_rng(seed)
    targets = _draw_targets(len(classes), n_per_class, task, rng)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = [f"images/{i:05d}.png" for i in range(len(targets))]
    slots = len(classes) - 1 if task == "multiclass" else len(classes)
    for path, target in zip(paths, targets):
        _write_png(out / path, draw_image(img_size, _findings(target, task), slots, rng))
    names = stratified_split(targets, splits, seed)
    rows = [(p, _label_text(t, classes), n) for p, t, n in zip(paths, targets, names)]
    return _write_manifest(out / "manifest.csv", rows)


def _draw_targets(num_classes: int, n_per_class: int, task: str, rng: np.random.Generator) -> list:
    if task == "multiclass":
        return [k for k in range(num_classes) for _ in range(n_per_class)]
    draws = rng.random((n_per_class * num_classes, num_classes)) < MULTILABEL_RATE
    draws[0] = np.arange(num_classes) < 2
    return [tuple(float(v) for v in row) for row in draws]


def _findings(target: int | tuple[float, ...], task: str) -> list[int]:
    if task == "multiclass":
        return [target - 1] if target > 0 else []
    return [k for k, v in enumerate(target) if v > 0]


def _label_text(target: int | tuple[float, ...], classes: Sequence[str]) -> str:
    if isinstance(target, int):
        return classes[target]
    return "|".join(c for c, v in zip(classes, target) if v > 0)


def draw_image(
    size: int, findings: Sequence[int], slots: int, rng: np.random.Generator
) -> np.ndarray:
    """One uint8 ``(size, size)`` image showing the given findings (slot indices)."""
    blobs = []
    for slot in findings:
        row = 0.2 + 0.6 * (slot + 0.5) / slots + rng.uniform(-0.02, 0.02)
        offset = 0.22 + rng.uniform(-0.02, 0.02)
        amplitude = 0.25 + 0.45 * (slot + 1) / slots + rng.uniform(-0.03, 0.03)
        blobs += [(0.5 - offset, row, amplitude), (0.5 + offset, row, amplitude)]
    return _render(size, blobs, rng)


def _render(size: int, blobs: Sequence[tuple[float, float, float]], rng: np.random.Generator) -> np.ndarray:
    """The chest-like picture with Gaussian blobs ``(x, y, amplitude)`` (fractions of the size)."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    image = 0.35 + 0.25 * ys
    for cx in (0.28, 0.72):
        lung = ((xs - cx) / 0.17) ** 2 + ((ys - 0.5) / 0.34) ** 2 < 1
        image = image - 0.15 * lung
    for cx, cy, amplitude in blobs:
        image = image + amplitude * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * SIGMA**2))
    image = image + rng.normal(0.0, NOISE, image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def make_pairs_dataset(
    out_dir: str | Path,
    n_per_class: int = 50,
    img_size: int = 32,
    seed: int = 0,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
) -> Path:
    """Write the blob-configuration task (classes `PAIR_CLASSES`); return the manifest path.

    Every blob has a random row (25-75% of the height) and brightness; ``one_sided``
    shows one blob in a random lung, ``symmetric`` one per lung at the same row,
    ``asymmetric`` one per lung with rows at least `ASYMMETRY` apart. The classes are
    invariant under horizontal flips.
    """
    if n_per_class < 1 or img_size < 8:
        raise ConfigError(f"need n_per_class >= 1 and img_size >= 8, got {n_per_class}, {img_size}")
    rng = np.random.default_rng(seed)
    targets = [k for k in range(len(PAIR_CLASSES)) for _ in range(n_per_class)]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = [f"images/{i:05d}.png" for i in range(len(targets))]
    for path, target in zip(paths, targets):
        _write_png(out / path, _render(img_size, _pair_blobs(target, rng), rng))
    names = stratified_split(targets, splits, seed)
    rows = [(p, PAIR_CLASSES[t], n) for p, t, n in zip(paths, targets, names)]
    return _write_manifest(out / "manifest.csv", rows)


def _pair_blobs(target: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Blobs ``(x, y, amplitude)`` of one sample of class ``PAIR_CLASSES[target]``."""
    count = (0, 1, 2, 2)[target]
    rows = rng.uniform(0.25, 0.75, 2)
    if target == 2:
        rows[1] = rows[0] + rng.uniform(-0.02, 0.02)
    elif target == 3:
        gap = rng.uniform(ASYMMETRY, 0.5)
        low = rng.uniform(0.25, 0.75 - gap)
        rows = rng.permutation([low, low + gap])
    sides = rng.permutation([0.28, 0.72])
    return [
        (sides[i] + rng.uniform(-0.03, 0.03), rows[i], rng.uniform(0.3, 0.7)) for i in range(count)
    ]


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG")


def _write_manifest(path: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "label", "split"])
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())
