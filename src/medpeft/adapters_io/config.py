"""``adapter_config.json``: everything needed to rebuild a model around a saved adapter.

Saved beside ``adapter_model.safetensors`` (the layout of Hugging Face PEFT) for
every method, so an adapter folder is self-describing: backbone, fusion
(modalities and their kinds), tuning method and its settings, label names, task
type and the input preprocessing. Format 1 (medpeft 0.1, LoRA fields at the top
level) is read as well.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medpeft import __version__
from medpeft.atomic import atomic_write_text
from medpeft.backbones.checkpoints import BackboneIdentity
from medpeft.backbones.timm_build import build_vit
from medpeft.config.tools import from_dict
from medpeft.errors import ConfigError
from medpeft.methods import get_method
from medpeft.model import ModelSpec, input_size_problem

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 2
_REQUIRED = ("backbone", "labels", "task", "preprocessing", "method")
_V1_LORA_FIELDS = ("targets", "blocks", "rank", "alpha", "dropout")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Preprocessing:
    """How images are turned into model inputs.

    Attributes:
        size: Square input side in pixels.
        mean: Per-channel normalisation mean (RGB).
        std: Per-channel normalisation standard deviation (RGB).
        interpolation: Resize filter (``bilinear``, ``bicubic``, ...).
        crop: Center-crop fraction (timm's ``crop_pct``; 1.0 = no crop).
        resize: ``crop`` (resize the shorter side, centre crop) or ``squash`` (the
            whole image to a square).
    """

    size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop: float = 1.0
    resize: Literal["crop", "squash"] = "crop"

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

    ``backbone_weights`` records where the frozen backbone's weights came from in
    training: a checkpoint path (relative paths are resolved from the adapter
    folder), ``"hub"`` (pretrained weights from the hub) or ``None`` (random init).
    ``backbone_sha256`` is the sha256 of those weights (a local file or folder, or the
    hub's file when it was in the local hub cache) and ``backbone_hub`` the hub repo
    (``repo@commit`` when known): loading onto other weights is refused
    (`medpeft.adapters_io.folder.verify_weights`); adapters saved before medpeft recorded
    them have None. ``backbone_seed`` is the seed a random backbone was drawn with, so it is rebuilt
    exactly. ``modalities`` maps each modality, in presence-mask order, to ``image`` or
    ``text``; ``inputs`` holds how samples were read (``missing_image``,
    ``combine``, ``tokenizer``, ``max_text_len``). ``positive_class`` is the class a
    two-class task's sensitivity, specificity and ROC are about (None otherwise, and in
    adapters saved before medpeft recorded it).
    """

    backbone: str | None
    labels: list[str]
    task: Literal["multiclass", "multilabel"]
    preprocessing: Preprocessing
    method: str = "lora"
    settings: dict = field(default_factory=dict)
    kind: Literal["timm", "transformers", "open_clip", "vilt"] = "timm"
    modalities: dict = field(default_factory=lambda: {"image": "image"})
    img_size: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    missing_token: bool = False
    vilt_config: dict | None = None
    fusion: Literal["auto", "early_intervention", "late"] = "auto"
    inputs: dict = field(default_factory=dict)
    backbone_weights: str | None = None
    backbone_sha256: str | None = None
    backbone_hub: str | None = None
    backbone_seed: int | None = None
    positive_class: str | None = None
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
        if not self.modalities or set(self.modalities.values()) - {"image", "text"}:
            raise ValueError(f"modalities must map names to 'image'/'text', got {self.modalities}")
        if self.positive_class is not None and self.positive_class not in self.labels:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of the labels {self.labels}")
        if self.backbone_sha256 is not None and not _SHA256.fullmatch(self.backbone_sha256):
            raise ValueError(f"backbone_sha256: expected 64 hex digits, got {self.backbone_sha256!r}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def recorded_identity(self) -> BackboneIdentity:
        """The backbone weights recorded at save time (unknown parts None)."""
        return BackboneIdentity(sha256=self.backbone_sha256, hub=self.backbone_hub)

    @property
    def text_modality(self) -> str | None:
        """Name of the text modality, if any."""
        return next((m for m, kind in self.modalities.items() if kind == "text"), None)

    def method_settings(self) -> Any:
        """The method's settings dataclass, validated."""
        method = get_method(self.method)
        return from_dict(method.settings_type, self.settings, f"{CONFIG_NAME}.settings")

    def to_spec(self) -> ModelSpec:
        """The :class:`~medpeft.model.ModelSpec` that rebuilds this adapter's model."""
        return ModelSpec(
            backbone=self.backbone,
            num_classes=self.num_classes,
            method=self.method,
            settings=self.method_settings(),
            img_size=self.img_size,
            modalities=tuple(self.modalities),
            kind=self.kind,
            text_modality=self.text_modality or "text",
            missing_token=self.missing_token,
            vilt_config=self.vilt_config,
            max_text_len=self.inputs.get("max_text_len"),
            model_kwargs=dict(self.model_kwargs),
            fusion=self.fusion,
        )


def make_config(
    spec: ModelSpec,
    labels: list[str],
    task: str,
    preprocessing: Preprocessing,
    kinds: dict[str, str] | None = None,
    inputs: dict | None = None,
    backbone_weights: str | None = None,
) -> AdapterConfig:
    """A validated config describing ``spec`` (``kinds``: modality -> image/text)."""
    kinds = kinds or {m: "text" if m == spec.text_modality else "image" for m in spec.modalities}
    if list(kinds) != list(spec.modalities):
        raise ConfigError(f"modalities {list(kinds)} differ from the model's {list(spec.modalities)}")
    try:
        return AdapterConfig(
            backbone=spec.backbone,
            labels=[str(label) for label in labels],
            task=task,
            preprocessing=preprocessing,
            method=spec.method,
            settings=spec.settings_dict(),
            kind=spec.kind,
            modalities=dict(kinds),
            img_size=spec.img_size,
            model_kwargs=dict(spec.model_kwargs),
            missing_token=spec.missing_token,
            vilt_config=spec.vilt_config,
            fusion=spec.fusion,
            inputs={"max_text_len": spec.max_text_len, **(inputs or {})},
            backbone_weights=backbone_weights,
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


def check_input_size(model: nn.Module, config: AdapterConfig, folder: str | Path) -> None:
    """ConfigError naming ``adapter_config.json`` unless ``model`` takes its ``preprocessing.size``
    (an edited size would end in an error deep inside the model, or drop pixels silently).

    timm models are judged on a bare copy of the backbone built on the meta device (no
    memory), as a method may have wrapped blocks (MoRA) so that no family reads them.
    """
    size = config.preprocessing.size
    if config.kind == "timm":
        with torch.device("meta"):
            model = build_vit(config.backbone, config.num_classes, config.img_size, **config.model_kwargs)
    problem = input_size_problem(model, size)
    if problem is not None:
        raise ConfigError(f"{config_path(folder)}: preprocessing.size {size} does not fit the model: {problem}")


def config_path(path: str | Path) -> Path:
    """``adapter_config.json`` of an adapter folder (or the file itself)."""
    path = Path(path)
    return path if path.suffix == ".json" else path / CONFIG_NAME


def read_adapter_config(path: str | Path) -> AdapterConfig:
    """Read and validate an adapter folder's ``adapter_config.json`` (format 1 or 2).

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
    if data.get("format_version", 1) == 1:
        data = _upgrade_v1(data)
    config = from_dict(AdapterConfig, data, str(file))
    try:
        config.method_settings()
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from error
    return config


def _upgrade_v1(data: dict) -> dict:
    """Format 1 (medpeft 0.1: one image modality, LoRA fields at the top level) -> 2."""
    data = dict(data)
    lora = {key: data.pop(key, None) for key in _V1_LORA_FIELDS}
    if data.get("method") == "lora":
        data["settings"] = {k: v for k, v in lora.items() if v is not None or k == "blocks"}
    data["format_version"] = FORMAT_VERSION
    return data
