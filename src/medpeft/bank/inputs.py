"""One input file per modality (a path or raw bytes) -> a task's preprocessed tensor.

Raw bytes are recognised by their signature (PNG, JPEG, BMP, GIF, TIFF, WebP,
DICOM, NIfTI, NumPy) and decoded by the same readers as training data
(:func:`medpeft.data.imageio.load_image`), then resized and normalised with the
task's recorded preprocessing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from medpeft.adapters_io.config import AdapterConfig
from medpeft.bank.errors import BadInput, WrongModality
from medpeft.data.imageio import ReadOptions, load_image
from medpeft.data.transforms import image_transforms
from medpeft.errors import DataError

Input = str | Path | bytes
Transform = Callable[[Image.Image], torch.Tensor]

_SIGNATURES = (  # (offset, magic bytes, file suffix the readers dispatch on)
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"GIF8", ".gif"),
    (0, b"BM", ".bmp"),
    (0, b"II*\x00", ".tif"),
    (0, b"MM\x00*", ".tif"),
    (8, b"WEBP", ".webp"),
    (128, b"DICM", ".dcm"),
    (0, b"\x93NUMPY", ".npy"),
    (344, b"n+1\x00", ".nii"),
    (0, b"\x1f\x8b", ".nii.gz"),  # gzip: the only compressed format the readers take
)


def image_suffix(data: bytes) -> str | None:
    """The file suffix of raw image bytes, from their signature; None if unknown."""
    for offset, magic, suffix in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return suffix
    return None


def read_image(modality: str, source: Input, options: ReadOptions | None = None) -> Image.Image:
    """Decode one input; BadInput naming ``modality`` when it is not a readable image."""
    try:
        if not isinstance(source, bytes):
            return load_image(source, options=options)
        return _read_bytes(source, options)
    except DataError as error:
        raise BadInput(f"modality {modality!r}: {error}") from error


def _read_bytes(data: bytes, options: ReadOptions | None) -> Image.Image:
    """Decode raw image bytes through a temporary file, whose path messages call ``upload.<suffix>``."""
    suffix = image_suffix(data)
    if suffix is None:
        raise DataError(
            "unrecognised image data (expected PNG, JPEG, BMP, GIF, TIFF, WebP, DICOM, "
            "NIfTI or .npy bytes)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_image(path, options=options)
        except DataError as error:  # the temporary folder means nothing to the sender
            raise DataError(str(error).replace(str(path), path.name)) from error


class Preprocessor:
    """A task's inputs -> tensors, as in training (its preprocessing, no augmentation)."""

    def __init__(self, task: str, config: AdapterConfig) -> None:
        self.task = task
        self.kinds = dict(config.modalities)
        self.read_options = ReadOptions(**config.inputs.get("read", {}))
        combine = config.inputs.get("combine") or {}
        self.transforms: dict[str, Transform] = image_transforms(
            self.kinds, combine, config.preprocessing, augment=False
        )

    def __call__(self, inputs: Mapping[str, Input], max_pixels: int | None = None) -> dict[str, torch.Tensor]:
        """``{modality: Tensor[3, H, W]}`` of the given modalities (at least one).

        ``max_pixels`` replaces the limit the adapter records (`ReadOptions.max_pixels`).
        """
        unknown = sorted(set(inputs) - set(self.kinds))
        if unknown:
            raise WrongModality(
                f"task {self.task!r} reads modalities {list(self.kinds)}, not {unknown}"
            )
        if not inputs:
            raise BadInput(f"task {self.task!r}: no input; expected one of {list(self.kinds)}")
        text = [m for m in inputs if m not in self.transforms]
        if text:
            raise WrongModality(f"task {self.task!r}: modalities {text} are text, not image files")
        options = self.read_options if max_pixels is None else replace(self.read_options, max_pixels=max_pixels)
        return {m: self.transforms[m](read_image(m, source, options)) for m, source in inputs.items()}
