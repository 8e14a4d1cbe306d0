"""``adapter_config.json``: everything needed to rebuild a model around a saved adapter.

Saved beside ``adapter_model.safetensors`` (the layout of Hugging Face PEFT), so
an adapter folder is self-describing: backbone, tuning method and its
hyper-parameters, label names, task type and the input preprocessing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medpeft import __version__
from medpeft.atomic import atomic_write_text
from medpeft.configtools import from_dict
from medpeft.errors import ConfigError
from medpeft.model import METHODS, LoraSettings, ModelSpec
from medpeft.tasks import check_task

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1
_REQUIRED = ("backbone", "labels", "task", "preprocessing", "method")


@dataclass
class Preprocessing:
    """How images are turned into model inputs.

    Attributes:
        size: Square input side in pixels.
        mean: Per-channel normalisation mean (RGB).
        std: Per-channel normalisation standard deviation (RGB).
        interpolation: Resize filter (``bilinear``, ``bicubic``, ...).
        crop: Center-crop fraction (timm's ``crop_pct``; 1.0 = no crop).
    """

    size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        if min(self.std) <= 0 or not 0 < self.crop <= 1:
            raise ValueError("std must be > 0 and crop in (0, 1]")


@dataclass
class AdapterConfig:
    """The contents of ``adapter_config.json``.

    LoRA fields (``targets`` .. ``dropout``) are ``None`` for the ``linear`` and
    ``full`` methods. ``backbone_weights`` records where the frozen backbone's
    weights came from in training: a checkpoint path, ``"hub"`` (timm's
    pretrained weights) or ``None`` (random init).
    """

    backbone: str
    labels: list[str]
    task: Literal["multiclass", "multilabel"]
    preprocessing: Preprocessing
    method: Literal["lora", "linear", "full"] = "lora"
    img_size: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    targets: list[str] | None = None
    blocks: list[int] | None = None
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    backbone_weights: str | None = None
    medpeft_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be a non-empty list of unique names, got {self.labels}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this medpeft "
                f"({__version__}) reads ({FORMAT_VERSION}); upgrade medpeft"
            )
        if self.method == "lora":
            if not self.targets or self.rank is None or self.alpha is None:
                raise ValueError("method 'lora' needs targets, rank and alpha")
            if self.rank < 1 or not 0 <= (self.dropout or 0.0) < 1:
                raise ValueError(f"need rank >= 1, dropout in [0, 1): {self.rank}, {self.dropout}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_spec(self) -> ModelSpec:
        """The :class:`~medpeft.model.ModelSpec` that rebuilds this adapter's model."""
        lora = LoraSettings()
        if self.method == "lora":
            lora = LoraSettings(
                targets=tuple(self.targets),
                rank=self.rank,
                alpha=self.alpha,
                dropout=self.dropout or 0.0,
                blocks=None if self.blocks is None else tuple(self.blocks),
            )
        return ModelSpec(
            backbone=self.backbone,
            num_classes=self.num_classes,
            method=self.method,
            img_size=self.img_size,
            lora=lora,
            model_kwargs=dict(self.model_kwargs),
        )


def make_config(
    spec: ModelSpec,
    labels: Sequence[str],
    task: str,
    preprocessing: Mapping[str, Any] | Preprocessing,
    lora_values: tuple[int, float, float] | None = None,
    backbone_weights: str | None = None,
) -> AdapterConfig:
    """Build a validated config from a model spec.

    Args:
        spec: The model's architecture and method.
        labels: Class (or label) names, one per head output.
        task: ``multiclass`` or ``multilabel``.
        preprocessing: ``size``, ``mean``, ``std``, ``interpolation``, ``crop``.
        lora_values: ``(rank, alpha, dropout)`` read from the trained adapter;
            defaults to ``spec.lora``.
        backbone_weights: Checkpoint path, ``"hub"`` or ``None`` (see `AdapterConfig`).
    """
    if spec.method not in METHODS:
        raise ConfigError(f"unknown method {spec.method!r}; expected one of {METHODS}")
    check_task(task)
    if not isinstance(preprocessing, Preprocessing):
        preprocessing = from_dict(Preprocessing, dict(preprocessing), "preprocessing")
    fields: dict[str, Any] = {}
    if spec.method == "lora":
        rank, alpha, dropout = lora_values or (spec.lora.rank, spec.lora.alpha, spec.lora.dropout)
        blocks = spec.lora.blocks
        fields = dict(
            targets=list(spec.lora.targets),
            blocks=None if blocks is None else sorted(blocks),
            rank=rank,
            alpha=float(alpha),
            dropout=float(dropout),
        )
    try:
        return AdapterConfig(
            backbone=spec.backbone,
            labels=[str(label) for label in labels],
            task=task,
            preprocessing=preprocessing,
            method=spec.method,
            img_size=spec.img_size,
            model_kwargs=dict(spec.model_kwargs),
            backbone_weights=backbone_weights,
            **fields,
        )
    except ValueError as error:
        raise ConfigError(f"adapter config: {error}") from error


def write_adapter_config(config: AdapterConfig, out_dir: str | Path) -> Path:
    """Write ``adapter_config.json`` atomically into ``out_dir``."""
    try:
        text = json.dumps(dataclasses.asdict(config), indent=2)
    except TypeError as error:
        raise ConfigError(f"adapter config: model_kwargs must be JSON values: {error}") from error
    return atomic_write_text(Path(out_dir) / CONFIG_NAME, text + "\n")


def config_path(path: str | Path) -> Path:
    """``adapter_config.json`` of an adapter folder (or the file itself)."""
    path = Path(path)
    return path if path.suffix == ".json" else path / CONFIG_NAME


def read_adapter_config(path: str | Path) -> AdapterConfig:
    """Read and validate an adapter folder's ``adapter_config.json``.

    Raises:
        ConfigError: naming the file and the field that is missing or invalid.
    """
    file = config_path(path)
    if not file.is_file():
        raise ConfigError(f"adapter config not found: {file} (adapter folders hold {CONFIG_NAME})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: invalid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object at the top level")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise ConfigError(f"{file}: missing field(s) {missing}")
    return from_dict(AdapterConfig, data, str(file))
