"""The one run config of ``medpeft train``, for one modality or several.

Sections: ``model`` (backbone, weights, text handling), ``method`` plus one
settings section named after it (``lora:``, ``mora:``, ``prompts:``... validated by
the registered method's settings dataclass), ``data`` (source, modalities, loader),
``missing`` (the missing-modality protocol; a no-op for one modality) and
``train`` (:class:`medpeft.train.TrainSettings`). A single-image task is simply a
config whose data has one modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from medpeft.backbones.presets import find_preset, preset_kind
from medpeft.data.imageio import MAX_PIXELS, ReadOptions
from medpeft.data.missing import MIXED_KINDS, MissingSetting
from medpeft.errors import ConfigError, did_you_mean
from medpeft.frozen_dtype import frozen_dtype_named
from medpeft.train.settings import TrainSettings

TASKS = Literal["multiclass", "multilabel"]
DEFAULT_IMG_SIZE = 224


@dataclass
class ModelSettings:
    """Backbone choice, where its weights come from, and text handling.

    Attributes:
        kind: ``timm`` (timm ViTs; Swin and ConvNeXt for one image modality), ``transformers``,
            ``open_clip`` or ``vilt`` (image + text); ``null``: the preset's, else ``timm``.
        backbone: timm model name, transformers hub id or folder, open_clip model name
            (``local-dir:`` folder, ``hf-hub:`` id), ViLT hub id / folder (``null``: the kind's
            default, e.g. ``vit_base_patch16_224`` or ``dandelin/vilt-b32-mlm``), or a preset
            name (``uni``, ``rad-dino``; ``medpeft backbones`` lists them): it sets ``kind``, the
            architecture arguments (``kwargs`` override them) and the default ``img_size``.
        img_size: input resolution; timm position embeddings are interpolated to it, an
            open_clip tower reads its own only (``null``: the preset's or the backbone's own size).
        pretrained: fetch the backbone's pretrained weights from the hub (needs internet).
        weights: local checkpoint file (ViLT: also a ``save_pretrained`` folder); wins
            over ``pretrained``.
        tokenizer: BERT tokenizer hub id, folder or ``vocab.txt`` (text modality only).
        max_text_len: tokens per text; above ViLT's 40 positions the table is interpolated.
        vilt_config: ``ViltConfig`` fields (random init or a state-dict file).
        dropout: probability of every dropout layer of the frozen backbone while training
            (the public MeLo and MoRA code train with 0.1; adapters keep their own).
        fusion: ``auto`` (one token stream, or ViLT), ``early_intervention`` (EI: one
            model per image modality first, then reference [CLS] tokens steer each target)
            or ``late`` (the same stage 1, then per-modality features joined at the end).
        kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``...),
            transformers config fields (``model_type`` for a random model) or
            ``open_clip.create_model`` arguments.
        frozen_dtype: storage and matmul dtype of the frozen Linear and Conv layers:
            ``float32``, ``bfloat16`` or ``float16`` (half the memory), or ``int8`` (weight-only
            through torchao, a quarter; matmuls in bf16; not with DoRA); adapters, head,
            norms, optimizer state and saved adapters stay fp32 (`medpeft.frozen_dtype`).
            A training option: ``eval``/``predict``/``serve`` rebuild in fp32.
    """

    kind: Literal["timm", "transformers", "open_clip", "vilt"] | None = None
    backbone: str | None = None
    img_size: int | None = None
    pretrained: bool = True
    weights: str | None = None
    tokenizer: str = "bert-base-uncased"
    max_text_len: int = 40
    vilt_config: dict | None = None
    dropout: float = 0.0
    fusion: Literal["auto", "early_intervention", "late"] = "auto"
    kwargs: dict = field(default_factory=dict)
    frozen_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.kind = preset_kind(self.backbone, self.kind)
        frozen_dtype_named(self.frozen_dtype, "model.frozen_dtype")
        if self.img_size is None:  # a preset's size; timm's 224; the library model's own size
            preset = find_preset(self.backbone)
            self.img_size = preset.img_size if preset else DEFAULT_IMG_SIZE if self.kind == "timm" else None
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: expected a number in [0, 1), got {self.dropout}")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError(f"model.img_size: expected an integer >= 1, got {self.img_size}")
        if self.max_text_len < 1:
            raise ConfigError(f"model.max_text_len: expected an integer >= 1, got {self.max_text_len}")


@dataclass
class DataSettings:
    """Where the samples are and how they are read and batched.

    Attributes:
        source: ``csv`` (a manifest), ``folder`` (class sub-folders), ``synthetic``, or a
            public dataset recipe (``shenzhen``, ``blood_cells``, ``chestxray14``,
            ``inbreast``, ``odir``, ``iu_xray``, ``mmc_amd``, ``derm7pt``, ``mrnet``).
        root: dataset folder (recipes, folder layout) or the folder of relative paths.
        manifest: CSV manifest path (``source: csv``).
        modalities: modality -> ``image``/``text`` in presence-mask order, one manifest
            column each (empty cell = missing); ``null``: one image modality read from
            ``image_col``.
        image_col, label_col, split_col, id_col: manifest columns.
        group_col: manifest column of groups that must stay in one split, e.g. ``patient``
            (several images per patient: a record-wise split inflates scores); ``null``:
            every sample on its own. A group spanning two values of the split column is
            an error.
        label_sep: separator of several class names in ``label_col`` (multi-label).
        label_cols: one 0/1 column per class instead of ``label_col`` (multi-label).
        task: ``multiclass`` or ``multilabel`` (``null``: inferred from the labels).
        classes: label names in head order (default: sorted names found; names that
            differ only in case or surrounding spaces are then an error). Given, a cell
            that matches a class but for case or spaces counts as that class.
        positive_class: the class a two-class task's sensitivity, specificity, PPV, AUROC
            and thresholds are about (``null``: the class that is not a recognised
            negative such as ``normal``; required when that does not pick one).
        combine: image modality -> ``stack`` or ``hconcat`` (images side by side).
        val_fraction, test_fraction: stratified split sizes for samples without a split.
        leakage: an image in two splits (the same file, or a byte-identical copy) is an
            ``error`` (default) or a ``warn`` ing naming the rows.
        num_samples, bits_per_modality: size and difficulty of the ``synthetic`` task.
        missing_image: what replaces a missing image: ``ones`` (MoRA), ``zeros``, ``token``.
        augment: random resized crop + flip + jitter on training images.
        resize: ``crop`` (resize + centre crop at the backbone's crop_pct) or ``squash``
            (the whole image to a square: nothing cut off, e.g. side-by-side pairs).
        hflip: flip probability when augmenting (never for ``hconcat`` modalities).
        augmentation: ``timm`` (random resized crop, flip, light jitter) or ``ei`` (the EI
            paper's rotation +-180, 10% side crops, flip, colour x U(0.7, 1.3)).
        normalize: image mean/std: the ``backbone``'s pretraining values, or ``clip`` /
            ``imagenet`` for every backbone (the EI code uses CLIP's).
        balanced: class-balanced training: ``true`` (weighted sampling with replacement,
            epochs as long as the data) or ``oversample`` (every class repeated up to the
            largest one, as the EI code's balanced lists; longer epochs).
        check_images: decode the images of the ``test`` split (default), of ``all`` splits
            or ``none`` before training, reporting every unreadable file at once.
        slice_index, slice_axis: slice of a volume (multi-frame DICOM, NIfTI, 3D ``.npy``;
            ``null``: the middle one) and the axis it is taken along (NIfTI default 2,
            ``.npy`` default 0).
        window: ``[centre, width]`` intensity window (e.g. ``[40, 400]`` Hounsfield units
            for soft-tissue CT) for grey DICOM, NIfTI, ``.npy`` and 16-bit PNG/TIFF;
            ``null``: the DICOM file's window, else min-max.
        max_pixels: most pixels of an image (or of the slice read from a volume); a file
            declaring more is refused before decoding, as a decompression bomb would be. A
            file's whole array may declare 16 bytes per such pixel (915 MiB by default).
        batch_size, num_workers: data loader settings; ``batch_size`` is the global batch,
            split between the processes under ``accelerate launch``.
        cache: keep decoded images, shrunk to the evaluation resize, in ``cache_dir``
            (`medpeft.data.cache`): epochs after the first skip decoding.
        cache_dir: folder of the image cache (``null``: ``$MEDPEFT_CACHE`` or
            ``~/.cache/medpeft/images``).
    """

    source: str = "csv"
    root: str | None = None
    manifest: str | None = None
    modalities: dict | None = None
    image_col: str = "image"
    label_col: str = "label"
    split_col: str = "split"
    id_col: str = "id"
    group_col: str | None = None
    label_sep: str = "|"
    label_cols: list[str] | None = None
    task: TASKS | None = None
    classes: list[str] | None = None
    positive_class: str | int | None = None
    combine: dict = field(default_factory=dict)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    leakage: Literal["error", "warn"] = "error"
    num_samples: int = 256
    bits_per_modality: int = 1
    missing_image: Literal["ones", "zeros", "token"] = "ones"
    augment: bool = True
    resize: Literal["crop", "squash"] = "crop"
    hflip: float = 0.5
    augmentation: Literal["timm", "ei"] = "timm"
    normalize: Literal["backbone", "imagenet", "clip"] = "backbone"
    balanced: bool | Literal["oversample"] = False
    check_images: Literal["test", "all", "none"] = "test"
    slice_index: int | None = None
    slice_axis: int | None = None
    window: list[float] | None = None
    max_pixels: int = MAX_PIXELS
    batch_size: int = 32
    num_workers: int = 2
    cache: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError(
                f"data.batch_size, data.num_workers: need >= 1 and >= 0, got "
                f"{self.batch_size}, {self.num_workers}"
            )
        self.read_options()  # ConfigError naming data.slice_axis / data.window
        if self.positive_class is not None:  # `positive_class: 1` reads as an integer in YAML
            self.positive_class = str(self.positive_class)

    def read_options(self) -> ReadOptions:
        """How volumes and wide-range images are read (`medpeft.data.imageio.ReadOptions`)."""
        window = tuple(self.window) if self.window is not None else None
        return ReadOptions(self.slice_index, self.slice_axis, window, self.max_pixels)


@dataclass
class GridSettings:
    """Test settings swept after training when the data has several modalities.

    Attributes:
        etas: missing rates.
        kinds: missing types (modality names, ``both``/``mixed``); default: each
            modality, then ``both``.
    """

    etas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    kinds: list[str] | None = None


@dataclass
class MissingSettings:
    """The missing-modality protocol (ignored for one modality).

    Attributes:
        train: setting of the train and val splits (paper: eta 0.7, ``both``).
        test: setting of the test split; default: ``train``'s.
        test_applies_to_val: val uses the ``test`` setting too (the public MoRA code).
        grid: settings the test split is also evaluated under.
        seed: seed of the missing tables (each split draws its own).
    """

    train: MissingSetting = field(default_factory=lambda: MissingSetting(0.7, "both"))
    test: MissingSetting | None = None
    test_applies_to_val: bool = False
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
                raise ConfigError(f"{key}: {kind!r} is not one of {known}{did_you_mean(kind, known)}")


@dataclass
class InterventionSettings:
    """Early intervention (``model.fusion: early_intervention``; SPEC section 3).

    Attributes:
        priors: multiplier of each modality's loss when picking the gate's target
            (paper: ``[1, 0.001]``, MRNet ``[1, 1, 0.001]``; default all ones).
        loss_weights: fused, targets, references, gate (paper: 1, 1, 0.3, 0.1).
        public_gate: cross-entropy on the gate's softmax, as the public code does.
        stage1_epochs: epochs of each single-modality stage-1 run (default ``train.epochs``).
    """

    priors: list[float] | None = None
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 0.3, 0.1])
    public_gate: bool = False
    stage1_epochs: int | None = None

    def __post_init__(self) -> None:
        if len(self.loss_weights) != 4 or min(self.loss_weights) < 0:
            raise ConfigError(
                f"intervention.loss_weights: expected 4 numbers >= 0, got {self.loss_weights}"
            )


@dataclass
class RunConfig:
    """A whole training run.

    ``settings`` holds the method settings sections by method name (the YAML keys
    ``lora:``, ``mora:``...); :meth:`method_settings` gives the active method's.
    """

    name: str = "run"
    output_dir: str = "runs/run"
    method: str = "lora"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    missing: MissingSettings = field(default_factory=MissingSettings)
    intervention: InterventionSettings = field(default_factory=InterventionSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    settings: dict[str, Any] = field(default_factory=dict)

    def method_settings(self) -> Any:
        """Settings of ``method``, or None for its defaults (no section in the config)."""
        return self.settings.get(self.method)
