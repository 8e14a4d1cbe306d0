"""Data: image files, manifests, transforms, datasets and loaders (single modality).

Multimodal data lives in `medpeft.data.multimodal` and `medpeft.data.missing`;
public dataset readers in `medpeft.data.recipes`.
"""

from medpeft.data.datasets import ImageClassificationDataset, balanced_weights, build_loader
from medpeft.data.imageio import load_image
from medpeft.data.manifest import (
    Manifest,
    Sample,
    read_csv_manifest,
    read_image_folder,
    split_samples,
)
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.data.transforms import build_transform

__all__ = [
    "ImageClassificationDataset",
    "Manifest",
    "Sample",
    "balanced_weights",
    "build_loader",
    "build_transform",
    "load_image",
    "make_synthetic_dataset",
    "read_csv_manifest",
    "read_image_folder",
    "split_samples",
]
