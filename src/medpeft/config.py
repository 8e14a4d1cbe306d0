"""The run config of ``medpeft train``: one YAML file, validated into dataclasses.

Sections: ``model`` (backbone and weights), ``method`` + ``lora`` (how to tune),
``data`` (where the images are and how to read them) and ``train``
(:class:`medpeft.train.TrainSettings`). Any key can be overridden on the
command line as ``section.key=value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.configtools import from_dict, read_config_data
from medpeft.errors import ConfigError
from medpeft.model import METHODS, LoraSettings
from medpeft.train.settings import TrainSettings


@dataclass
class ModelSettings:
    """Backbone choice and where its weights come from.

    Attributes:
        backbone: timm model name (``vit_base_patch16_224``, ``vit_base_patch14_reg4_dinov2``...).
        img_size: input resolution; position embeddings are interpolated to it.
        pretrained: fetch the backbone's pretrained weights from the hub (needs internet).
        weights: local checkpoint file (.safetensors/.pth/.bin); wins over ``pretrained``.
        kwargs: extra ``timm.create_model`` arguments (e.g. ``depth`` for tiny models).
    """

    backbone: str = "vit_base_patch16_224"
    img_size: int | None = 224
    pretrained: bool = True
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass
class DataSettings:
    """Where the data is and how to read it.

    Attributes:
        source: ``csv`` (a manifest), ``folder`` (class sub-folders),
            or a public dataset recipe (``shenzhen``, ``blood_cells``, ``chestxray14``, ``inbreast``).
        root: dataset folder (recipes, folder layout) or image root for relative CSV paths.
        manifest: CSV manifest path (``source: csv``).
        image_col, label_col, split_col, label_sep: CSV columns and multi-label separator.
        label_cols: one 0/1 column per class instead of ``label_col`` (multi-label).
        classes: class names in head order; default: sorted names found in the data.
        val_fraction, test_fraction: split sizes when the data has no split column.
        batch_size, num_workers: data loader settings.
        balanced: class-balanced sampling of the training set.
    """

    source: str = "csv"
    root: str | None = None
    manifest: str | None = None
    image_col: str = "image"
    label_col: str = "label"
    split_col: str = "split"
    label_sep: str = "|"
    label_cols: list[str] | None = None
    classes: list[str] | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    batch_size: int = 32
    num_workers: int = 2
    balanced: bool = False


@dataclass
class RunConfig:
    """A whole training run."""

    name: str = "run"
    output_dir: str = "runs/run"
    method: str = "lora"
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"config.method: {self.method!r} is not one of {list(METHODS)}")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults) and apply ``key=value`` overrides."""
    return from_dict(RunConfig, read_config_data(path, overrides), path=str(path or "config"))
