"""Run a single-modality experiment from a :class:`~medpeft.config.RunConfig`.

``train_run`` is what ``medpeft train`` does: read the data, build the model,
train with evaluation each epoch, keep the best epoch, save the adapter and
report test metrics. ``evaluate_adapter`` and ``predict_images`` serve
``medpeft eval`` and ``medpeft predict``. ``start_run`` and ``write_metrics``
lay out the run folder of single-modality and multimodal runs alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from medpeft.adapters.config import AdapterConfig, Preprocessing
from medpeft.adapters.inject import ParameterCount, count_parameters
from medpeft.adapters.io import HUB, default_preprocessing, load_adapter, save_adapter
from medpeft.atomic import atomic_write_text
from medpeft.config import DataSettings, RunConfig
from medpeft.configtools import save_config
from medpeft.data.datasets import ImageClassificationDataset, build_loader
from medpeft.data.imageio import load_image
from medpeft.data.manifest import (
    UNSPLIT,
    Manifest,
    holdout_fractions,
    read_csv_manifest,
    read_image_folder,
)
from medpeft.data.recipes import RECIPES
from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError
from medpeft.model import ModelSpec, build_model
from medpeft.train import evaluate, fit, predict
from medpeft.train.settings import resolve_device

if TYPE_CHECKING:
    from medpeft.multimodal_config import MultiModalDataSettings

ADAPTER_DIR = "adapter"
CONFIG_NAME = "config.yaml"
SOURCES = ("csv", "folder", *RECIPES)


@dataclass
class RunReport:
    """What a finished training run produced."""

    run_dir: Path
    adapter_dir: Path
    params: ParameterCount
    adapter_bytes: int
    best_epoch: int | None
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]


def start_run(config: object) -> Path:
    """Create the run folder ``config.output_dir`` and write the resolved config into it."""
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG_NAME)
    return run_dir


def write_metrics(out_dir: Path, split: str, metrics: dict[str, float]) -> Path:
    """Write ``{split}_metrics.json`` into ``out_dir``."""
    return atomic_write_text(out_dir / f"{split}_metrics.json", json.dumps(metrics, indent=2))


def load_manifest(data: DataSettings, seed: int = 0) -> Manifest:
    """Read the dataset the ``data`` section describes, split train/val/test."""
    if data.source == "csv":
        if data.manifest is None:
            raise ConfigError("data.manifest: source 'csv' needs the path of a CSV manifest")
        manifest = read_csv_manifest(
            data.manifest,
            image_col=data.image_col,
            label_col=data.label_col,
            split_col=data.split_col,
            root=data.root,
            label_sep=data.label_sep,
            classes=data.classes,
            label_cols=data.label_cols,
        )
    elif data.source == "folder":
        manifest = read_image_folder(dataset_root(data), data.classes)
    elif data.source in RECIPES:
        manifest = RECIPES[data.source](dataset_root(data))
    else:
        raise ConfigError(f"data.source: {data.source!r} is not one of {list(SOURCES)}")
    if UNSPLIT not in manifest.splits:
        return manifest
    return manifest.with_splits(holdout_fractions(data.val_fraction, data.test_fraction), seed)


def dataset_root(data: DataSettings | MultiModalDataSettings) -> str:
    """``data.root``, or a ConfigError saying the source needs its dataset folder."""
    if data.root is None:
        raise ConfigError(f"data.root: source {data.source!r} needs the dataset folder")
    return data.root


def make_loader(
    manifest: Manifest, split: str, pre: Preprocessing, data: DataSettings, train: bool, seed: int
) -> torch.utils.data.DataLoader:
    """Data loader of one split with the backbone's preprocessing."""
    transform = build_transform(
        pre.size, pre.mean, pre.std, train=train, interpolation=pre.interpolation, crop_pct=pre.crop
    )
    dataset = ImageClassificationDataset.from_manifest(manifest, split, transform)
    return build_loader(dataset, data.batch_size, train, data.num_workers, data.balanced and train, seed)


def model_spec(config: RunConfig, num_classes: int) -> ModelSpec:
    """The architecture a run config asks for."""
    return ModelSpec(
        backbone=config.model.backbone,
        num_classes=num_classes,
        method=config.method,
        img_size=config.model.img_size,
        lora=config.lora,
        model_kwargs=dict(config.model.kwargs),
    )


def train_run(config: RunConfig, resume: bool = True, progress: bool = True) -> RunReport:
    """Train, keep the best epoch, save the adapter and evaluate on the test split."""
    run_dir = start_run(config)
    seed = config.train.seed
    manifest = load_manifest(config.data, seed)
    spec = model_spec(config, manifest.num_classes)
    torch.manual_seed(seed)
    model = build_model(spec, pretrained=config.model.pretrained, weights=config.model.weights)
    pre = default_preprocessing(model, config.model.img_size)
    loaders = {
        split: make_loader(manifest, split, pre, config.data, split == "train", seed)
        for split in ("train", "val", "test")
        if manifest.splits.get(split)
    }
    if "train" not in loaders or "val" not in loaders:
        raise ConfigError("the data needs non-empty train and val splits (check the split column/fractions)")
    result = fit(
        model, loaders["train"], loaders["val"], manifest.task, config.train, run_dir,
        class_names=manifest.classes, resume=resume, progress=progress,
    )
    backbone_weights = config.model.weights or (HUB if config.model.pretrained else None)
    adapter_dir = save_adapter(
        model, run_dir / ADAPTER_DIR, spec, manifest.classes, manifest.task, pre,
        backbone_weights=backbone_weights,
    )
    test_metrics = {}
    if "test" in loaders:
        test_metrics = evaluate(model, loaders["test"], manifest.task, manifest.classes).metrics
        write_metrics(run_dir, "test", test_metrics)
    return RunReport(
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        params=count_parameters(model),
        adapter_bytes=sum(f.stat().st_size for f in adapter_dir.iterdir()),
        best_epoch=result.best_epoch,
        val_metrics=result.best_metrics,
        test_metrics=test_metrics,
    )


def load_for_inference(
    adapter: str | Path, weights: str | None = None, pretrained: bool = False, device: str = "auto"
) -> tuple[nn.Module, AdapterConfig]:
    """Model + config of a saved adapter, in eval mode on ``device``."""
    model, config = load_adapter(adapter, weights=weights, pretrained=pretrained)
    return model.to(resolve_device(device)).eval(), config


def evaluate_adapter(
    adapter: str | Path,
    data: DataSettings,
    split: str = "test",
    weights: str | None = None,
    pretrained: bool = False,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, float]:
    """Metrics of a saved adapter on one split of a dataset."""
    model, config = load_for_inference(adapter, weights, pretrained, device)
    manifest = load_manifest(data, seed)
    if manifest.classes != config.labels:
        raise ConfigError(
            f"the data's classes {manifest.classes} differ from the adapter's labels {config.labels}"
        )
    loader = make_loader(manifest, split, config.preprocessing, data, train=False, seed=seed)
    return evaluate(model, loader, config.task, config.labels, progress=True).metrics


def predict_images(
    adapter: str | Path,
    paths: list[str],
    weights: str | None = None,
    pretrained: bool = False,
    batch_size: int = 16,
) -> list[dict[str, float]]:
    """Class scores (softmax or sigmoid) for each image file, keyed by label."""
    model, config = load_for_inference(adapter, weights, pretrained)
    pre = config.preprocessing
    transform = build_transform(pre.size, pre.mean, pre.std, interpolation=pre.interpolation, crop_pct=pre.crop)
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    loader = [torch.stack([transform(load_image(p)) for p in batch]) for batch in batches]
    scores = predict(model, loader, config.task) if loader else np.zeros((0, config.num_classes))
    return [dict(zip(config.labels, map(float, row))) for row in scores]
