"""Multimodal samples: schema, dataset and collate (the batch dict of CONTRIBUTING-INTERFACES).

A record maps each modality to its raw value: a tuple of image paths for an
image modality (empty = genuinely missing; several = ``K`` images, e.g. MRI
slices) or a string for the text modality (``""`` = missing). The dataset
loads images, applies the per-modality transform, applies the missing-modality
table and fills what is missing:

* missing image, policy ``"ones"`` (MoRA default): an all-ones tensor after
  normalisation; ``"zeros"``: all zeros; ``"token"``: all zeros, and the model
  is expected to substitute a learned token wherever ``present`` is False.
* missing text: the empty string, which tokenises to ``[CLS] [SEP]`` + padding.

Items are ``(inputs, target)`` with ``inputs = {"images": {m: Tensor[3, H, W] or
[K, 3, H, W]}, "text": str (if a text modality), "present": Bool[M]}``;
`multimodal_collate` batches them into the documented dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import Dataset

from medpeft.data.imageio import load_image
from medpeft.data.manifest import Target
from medpeft.data.missing import MissingTable, effective_presence
from medpeft.errors import ConfigError, DataError

MODALITY_KINDS = ("image", "text")
MISSING_IMAGE_POLICIES = ("ones", "zeros", "token")
COMBINE_MODES = ("stack", "hconcat")

Item = tuple[dict, torch.Tensor]


@dataclass
class MultiModalRecord:
    """One sample: raw modality values, target, optional split and its origin.

    Attributes:
        id: unique sample id (key of the missing table).
        values: modality -> tuple of image paths, or raw text.
        target: class index (multiclass) or 0/1 vector (multilabel).
        split: ``train``/``val``/``test`` or None.
        where: origin for error messages, e.g. ``manifest.csv line 4``.
    """

    id: str
    values: dict[str, tuple[str, ...] | str]
    target: Target
    split: str | None = None
    where: str = ""

    def available(self, modalities: Sequence[str]) -> tuple[bool, ...]:
        """Which modalities the data genuinely holds for this sample."""
        return tuple(_has_value(self.values.get(m)) for m in modalities)


@dataclass
class MultiModalSource:
    """Records plus what is needed to build datasets and models from them."""

    records: list[MultiModalRecord]
    modalities: tuple[str, ...]
    kinds: dict[str, str]
    label_names: list[str]
    task: str
    combine: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> list[MultiModalRecord]:
        """Records of one split."""
        return [r for r in self.records if r.split == name]

    def ids(self, split: str) -> list[str]:
        """Sample ids of one split: the keys a missing table for it needs."""
        return [r.id for r in self.split(split)]


def _has_value(value: tuple[str, ...] | str | None) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return bool(value)


def hconcat_images(images: Sequence[Image.Image]) -> Image.Image:
    """Place images side by side, each resized to the first one's height."""
    height = images[0].height
    resized = [
        im
        if im.height == height
        else im.resize((max(1, round(im.width * height / im.height)), height))
        for im in images
    ]
    canvas = Image.new("RGB", (sum(im.width for im in resized), height))
    left = 0
    for im in resized:
        canvas.paste(im.convert("RGB"), (left, 0))
        left += im.width
    return canvas


def check_modalities(modalities: Sequence[str], kinds: Mapping[str, str]) -> None:
    """Validate modality kinds: each image or text, at most one text modality."""
    for m in modalities:
        if kinds.get(m) not in MODALITY_KINDS:
            raise ConfigError(
                f"modality {m!r} needs a kind in {MODALITY_KINDS}, got {kinds.get(m)!r}"
            )
    if sum(kinds[m] == "text" for m in modalities) > 1:
        raise ConfigError("at most one text modality is supported (one token stream)")


def check_missing_image(policy: str) -> str:
    """Return ``policy`` if it is a missing-image policy, else raise ConfigError."""
    if policy not in MISSING_IMAGE_POLICIES:
        raise ConfigError(f"missing_image must be one of {MISSING_IMAGE_POLICIES}, got {policy!r}")
    return policy


def fill_missing_image(shape: Sequence[int], policy: str) -> torch.Tensor:
    """The tensor that stands in for a missing image under ``policy``."""
    if policy == "ones":
        return torch.ones(*shape)
    return torch.zeros(*shape)


def target_tensor(target: Target) -> torch.Tensor:
    """Class index -> LongTensor scalar; 0/1 vector -> FloatTensor."""
    if isinstance(target, int):
        return torch.tensor(target, dtype=torch.long)
    return torch.tensor(target, dtype=torch.float32)


class MultiModalDataset(Dataset):
    """Dataset of multimodal records with a missing-modality table applied.

    Args:
        records: the samples (every row kept; none dropped).
        modalities: modality order; column ``i`` of ``present`` is ``modalities[i]``.
        kinds: modality -> ``"image"`` or ``"text"``.
        transforms: image modality -> callable PIL image -> Tensor[3, H, W]
            of a fixed size (e.g. ``build_transform``).
        missing_table: presence per sample id, or None (only genuine gaps).
        missing_image: ``"ones"`` | ``"zeros"`` | ``"token"``.
        combine: image modality -> ``"stack"`` (default; K images -> [K, 3, H, W])
            or ``"hconcat"`` (images side by side as one, e.g. ODIR left+right).
    """

    def __init__(
        self,
        records: Sequence[MultiModalRecord],
        modalities: Sequence[str],
        kinds: Mapping[str, str],
        transforms: Mapping[str, Callable[[Image.Image], torch.Tensor]],
        missing_table: MissingTable | None = None,
        missing_image: str = "ones",
        combine: Mapping[str, str] | None = None,
    ) -> None:
        check_modalities(modalities, kinds)
        self.records = list(records)
        self.modalities = tuple(modalities)
        self.kinds = dict(kinds)
        self.image_modalities = [m for m in self.modalities if kinds[m] == "image"]
        self.text_modality = next((m for m in self.modalities if kinds[m] == "text"), None)
        self.transforms = dict(transforms)
        self.missing_table = missing_table
        self.missing_image = check_missing_image(missing_image)
        self.combine = {m: (combine or {}).get(m, "stack") for m in self.image_modalities}
        self._check()
        self.counts = {m: self._image_count(m) for m in self.image_modalities}
        self.fill_shapes = {m: self._fill_shape(m) for m in self.image_modalities}

    def _check(self) -> None:
        for m in self.image_modalities:
            if m not in self.transforms:
                raise ConfigError(f"no transform for image modality {m!r}")
            if self.combine[m] not in COMBINE_MODES:
                raise ConfigError(f"combine for {m!r} must be one of {COMBINE_MODES}")
        for r in self.records:
            if not any(r.available(self.modalities)):
                raise DataError(f"{r.where or r.id}: sample {r.id!r} has no modality at all")
        if self.missing_table is not None and self.missing_table.modalities != self.modalities:
            have = self.missing_table.modalities
            raise ConfigError(f"missing table modalities {have} != dataset {self.modalities}")

    def _image_count(self, m: str) -> int:
        """Images per sample of modality ``m`` after combining (all samples must agree)."""
        if self.combine[m] == "hconcat":
            return 1
        sized = [r for r in self.records if _has_value(r.values.get(m))]
        expected = len(sized[0].values[m]) if sized else 1
        for r in sized:
            if len(r.values[m]) != expected:
                raise DataError(
                    f"{r.where or r.id} column {m!r}: has {len(r.values[m])} images, "
                    f"earlier samples have {expected}"
                )
        return expected

    def _fill_shape(self, m: str) -> tuple[int, ...]:
        """Shape of a missing image: that of the first real image of ``m``."""
        first = next((r for r in self.records if _has_value(r.values.get(m))), None)
        if first is None:
            raise DataError(
                f"modality {m!r} has no image in any sample; cannot size a missing image"
            )
        return tuple(self._load(first, m).shape)

    def __len__(self) -> int:
        return len(self.records)

    def presence(self, index: int) -> tuple[bool, ...]:
        """Presence of each modality for sample ``index`` (table and genuine gaps combined)."""
        record = self.records[index]
        available = record.available(self.modalities)
        if self.missing_table is None:
            return available
        return effective_presence(self.missing_table.presence(record.id), available)

    def _load(self, record: MultiModalRecord, m: str) -> torch.Tensor:
        paths = record.values[m]
        try:
            images = [load_image(p) for p in paths]
        except (OSError, ValueError) as err:
            raise DataError(
                f"{record.where or record.id} column {m!r}: cannot read {paths}: {err}"
            ) from err
        if self.combine[m] == "hconcat":
            images = [hconcat_images(images)]
        tensors = [self.transforms[m](im) for im in images]
        return tensors[0] if self.counts.get(m, 1) == 1 else torch.stack(tensors)

    def __getitem__(self, index: int) -> Item:
        record = self.records[index]
        present = self.presence(index)
        inputs: dict = {"images": {}, "present": torch.tensor(present, dtype=torch.bool)}
        for i, m in enumerate(self.modalities):
            if m == self.text_modality:
                inputs["text"] = str(record.values.get(m, "")).strip() if present[i] else ""
            elif present[i]:
                inputs["images"][m] = self._load(record, m)
            else:
                inputs["images"][m] = fill_missing_image(self.fill_shapes[m], self.missing_image)
        return inputs, target_tensor(record.target)


class MultiModalCollate:
    """Batch items into ``(inputs, targets)``; tokenises the text modality (picklable)."""

    def __init__(self, tokenizer: Callable | None = None, max_text_len: int = 40) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __call__(self, batch: Sequence[Item]) -> tuple[dict, torch.Tensor]:
        items, targets = zip(*batch)
        inputs: dict = {
            "images": {
                m: torch.stack([it["images"][m] for it in items]) for m in items[0]["images"]
            },
            "present": torch.stack([it["present"] for it in items]),
        }
        if "text" in items[0]:
            inputs["text"] = self._tokenize([it["text"] for it in items])
        return inputs, torch.stack(targets)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ConfigError(
                "the dataset has a text modality: pass a tokenizer to multimodal_collate"
            )
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_text_len,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].long(),
            "attention_mask": enc["attention_mask"].long(),
        }


def multimodal_collate(
    tokenizer: Callable | None = None, max_text_len: int = 40
) -> MultiModalCollate:
    """A DataLoader ``collate_fn`` producing the multimodal batch dict.

    Args:
        tokenizer: Hugging Face tokenizer for the text modality (e.g. bert-base-uncased).
        max_text_len: tokens per text, padded/truncated (ViLT: 40).
    """
    return MultiModalCollate(tokenizer, max_text_len)
