"""The run config of a multimodal ``medpeft train``: one YAML file, validated into dataclasses.

A multimodal config carries the top-level key ``run_type: multimodal`` (single-modality
configs have no such key), which is how ``medpeft train`` picks the loader. Sections:
``model`` (ViLT or a multistream timm ViT), ``method`` + ``mora``/``lora``/``prompts``,
``data`` (source, modalities, loader), ``missing`` (the seeded missing-modality protocol
for training, testing and the evaluation grid) and ``train``
(:class:`medpeft.train.TrainSettings`). Any key can be overridden as ``section.key=value``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medpeft.configtools import from_dict, read_config_data
from medpeft.data.missing import MIXED_KINDS, MissingSetting
from medpeft.data.multimodal import MISSING_IMAGE_POLICIES
from medpeft.errors import ConfigError
from medpeft.model import LoraSettings
from medpeft.multimodal_model import KINDS, METHODS, MoraSettings, PromptSettings
from medpeft.tasks import TASKS
from medpeft.train.settings import TrainSettings

RUN_TYPE = "multimodal"
SOURCES = ("csv", "odir", "iu_xray", "synthetic")
SYNTHETIC_MODALITIES = {"a": "image", "b": "image"}


@dataclass
class MultiModalModelSettings:
    """Backbone, weights and text handling.

    Attributes:
        kind: ``vilt`` (image + text, one stream) or ``timm`` (image modalities only).
        backbone: ViLT hub id or folder / timm model name (default per kind).
        weights: local checkpoint (ViLT: ``save_pretrained`` folder or state-dict file);
            wins over ``pretrained``.
        pretrained: load the backbone's hub weights (needs internet or the HF cache).
        img_size: square input side the images are resized to (ViLT: 384).
        tokenizer: BERT tokenizer hub id, folder or ``vocab.txt`` (text modality only).
        max_text_len: tokens per text, padded/truncated; above the checkpoint's 40 text
            positions, ViLT's position table is interpolated to this length (frozen).
        vilt_config: ``ViltConfig`` fields (random init or a state-dict file).
        kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``...).
    """

    kind: Literal[KINDS] = "vilt"
    backbone: str | None = None
    weights: str | None = None
    pretrained: bool = True
    img_size: int = 384
    tokenizer: str = "bert-base-uncased"
    max_text_len: int = 40
    vilt_config: dict | None = None
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_text_len < 1:
            raise ConfigError(f"model.max_text_len must be at least 1, got {self.max_text_len}")


@dataclass
class MultiModalDataSettings:
    """Where the samples are and how they are loaded.

    Attributes:
        source: ``csv`` (a multimodal manifest), ``odir``, ``iu_xray`` or ``synthetic``.
        root: dataset folder (recipes) or the folder of relative manifest paths.
        manifest: CSV manifest (``source: csv``).
        modalities: modality -> ``image``/``text``, in presence-mask order
            (``csv`` and ``synthetic``; the recipes fix their own ``image``, ``text``).
        label_cols: label column(s) of the manifest.
        task: ``multiclass`` or ``multilabel`` (``csv`` and ``synthetic``).
        classes: label names in head order (``csv``; ``iu_xray``: the problems to predict).
        id_col, split_col: manifest columns.
        combine: image modality -> ``stack`` or ``hconcat`` (images side by side).
        val_fraction, test_fraction: split sizes for samples without a split.
        num_samples, bits_per_modality: size and difficulty of the ``synthetic`` task.
        missing_image: what replaces a missing image: ``ones`` (MoRA), ``zeros`` or
            ``token`` (a learned token inside the model).
        augment: random resized crop + flip + jitter on training images (MoRA: off).
        hflip: flip probability when augmenting (never for ``hconcat`` modalities).
        batch_size, num_workers: data loader settings.
    """

    source: Literal[SOURCES] = "csv"
    root: str | None = None
    manifest: str | None = None
    modalities: dict | None = None
    label_cols: list[str] = field(default_factory=lambda: ["label"])
    task: Literal[TASKS] = "multilabel"
    classes: list[str] | None = None
    id_col: str = "id"
    split_col: str = "split"
    combine: dict = field(default_factory=dict)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    num_samples: int = 256
    bits_per_modality: int = 1
    missing_image: Literal[MISSING_IMAGE_POLICIES] = "ones"
    augment: bool = False
    hflip: float = 0.5
    batch_size: int = 32
    num_workers: int = 2


@dataclass
class GridSettings:
    """Test settings swept after training: every ``kind`` at every ``eta``.

    Attributes:
        etas: missing rates.
        kinds: missing types (modality names, ``both``/``mixed``); default: each
            modality, then ``both``.
    """

    etas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    kinds: list[str] | None = None


@dataclass
class MissingSettings:
    """The missing-modality protocol.

    Attributes:
        train: setting of the train and val splits (paper: eta 0.7, ``both``).
        test: setting of the test split; default: ``train``'s.
        grid: settings the test split is also evaluated under.
        seed: seed of the missing tables (each split draws its own).
    """

    train: MissingSetting = field(default_factory=lambda: MissingSetting(0.7, "both"))
    test: MissingSetting | None = None
    grid: GridSettings = field(default_factory=GridSettings)
    seed: int = 0

    def grid_kinds(self, modalities: Sequence[str]) -> list[str]:
        """The grid's missing types, defaulting to each modality then ``both``."""
        return list(self.grid.kinds) if self.grid.kinds else [*modalities, "both"]

    def check(self, modalities: Sequence[str]) -> None:
        """Raise ConfigError naming the key of a missing type that is no modality."""
        known = [*modalities, *MIXED_KINDS]
        named = [("missing.train.kind", self.train.kind)]
        if self.test is not None:
            named.append(("missing.test.kind", self.test.kind))
        named += [("missing.grid.kinds", kind) for kind in self.grid_kinds(modalities)]
        for key, kind in named:
            if kind not in known:
                raise ConfigError(f"{key}: {kind!r} is not one of {known}")


@dataclass
class MultiModalRunConfig:
    """A whole multimodal training run."""

    run_type: Literal[RUN_TYPE] = RUN_TYPE
    name: str = "run"
    output_dir: str = "runs/run"
    method: Literal[METHODS] = "mora"
    model: MultiModalModelSettings = field(default_factory=MultiModalModelSettings)
    mora: MoraSettings = field(default_factory=MoraSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    data: MultiModalDataSettings = field(default_factory=MultiModalDataSettings)
    missing: MissingSettings = field(default_factory=MissingSettings)
    train: TrainSettings = field(default_factory=TrainSettings)


def is_multimodal(data: Mapping) -> bool:
    """Whether raw config data (a YAML mapping) describes a multimodal run."""
    return data.get("run_type") == RUN_TYPE


def load_multimodal_config(
    path: str | Path | None, overrides: Sequence[str] = ()
) -> MultiModalRunConfig:
    """Read a multimodal YAML run config (or start from defaults) and apply overrides."""
    data = read_config_data(path, overrides)
    data.setdefault("run_type", RUN_TYPE)
    return from_dict(MultiModalRunConfig, data, path=str(path or "config"))
