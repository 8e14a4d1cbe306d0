"""The one dataset: records of any number of modalities -> ``(inputs, target)`` items.

``inputs = {"images": {m: Tensor[3, H, W] or [K, 3, H, W]}, "text": str (only
with a text modality), "present": Bool[M]}``; a single-image source gives
``{"images": {"image": Tensor[3, H, W]}, "present": tensor([True])}``. The
target is a LongTensor scalar (multiclass) or FloatTensor[C] (multilabel).

Presence combines what the data genuinely hold with an optional
missing-modality table (`medpeft.data.missing`). What is missing is filled:

* missing image, policy ``"ones"`` (MoRA default): an all-ones tensor after
  normalisation; ``"zeros"``: all zeros; ``"token"``: all zeros, and the model
  is expected to substitute a learned token wherever ``present`` is False;
  sized like the modality's first real image (or, for a modality absent from
  every record, like the first image of another modality);
* missing text: the empty string, which tokenises to ``[CLS] [SEP]`` + padding.

Several files of one image modality are combined per ``combine`` mode: ``stack``
(all ``K`` files, ``[K, 3, H, W]``), ``hconcat`` (side by side as one image), ``one``
(one file per sample: a random one in training, the first in sorted order otherwise; e.g. the several
OCT B-scans of an MMC-AMD eye) or ``slices:K`` (one volume file, ``K`` evenly spaced
slices, jittered in training; e.g. MRNet, see `medpeft.data.volumes`).

A sample that cannot be read (unreadable file, non-finite pixels) raises
`DataError` naming its manifest row and file (``on_bad_sample="stop"``), or, with
``on_bad_sample="skip"``, becomes the item ``({"skipped": message}, target)``
that `medpeft.data.collate.Collate` leaves out of the batch (listing the
message in ``inputs["skipped"]``).

Transforms are given per image modality. Text modalities take none; an image
modality absent from every record may go without one only when
``allow_missing_keys=True`` (explicit, as in MONAI's ``MapTransform``).
`medpeft.data.collate.Collate` batches the items.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from PIL import Image
from torch.utils import data

from medpeft.data.imageio import ReadOptions, load_image
from medpeft.data.missing import MissingTable, effective_presence
from medpeft.data.records import Record, Source, Target, check_modalities, has_value
from medpeft.data.volumes import spaced_slices, volume_depth
from medpeft.errors import ConfigError, DataError

MISSING_IMAGE_POLICIES = ("ones", "zeros", "token")
BAD_SAMPLE_POLICIES = ("stop", "skip")
COMBINE_MODES = ("stack", "hconcat", "one", "slices:K")

Transform = Callable[[Image.Image], torch.Tensor]
Item = tuple[dict, torch.Tensor]


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


def parse_combine(mode: str) -> tuple[str, int]:
    """A combine mode as ``(name, slices)``: ``"slices:4"`` -> ``("slices", 4)``, others
    ``(mode, 0)``; ConfigError for an unknown mode."""
    name, sep, count = mode.partition(":")
    if name == "slices" and sep and count.isdigit() and int(count) >= 1:
        return name, int(count)
    if mode in COMBINE_MODES[:3]:
        return mode, 0
    raise ConfigError(f"combine mode {mode!r}: expected one of {list(COMBINE_MODES)} (K >= 1)")


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


def sample_name(record: Record) -> str:
    """Where a sample comes from, for messages: its manifest row and first file."""
    files = [v[0] for v in record.values.values() if isinstance(v, tuple) and v]
    where = record.where or f"sample {record.id}"
    return f"{where} ({files[0]})" if files else where


class Dataset(data.Dataset):
    """Records with a missing-modality table applied (see the module docstring).

    Args:
        records: the samples (every one kept; none dropped).
        modalities: modality order; column ``i`` of ``present`` is ``modalities[i]``.
        kinds: modality -> ``"image"`` or ``"text"``.
        transforms: image modality -> PIL image -> Tensor[3, H, W] of a fixed size
            (e.g. `medpeft.data.transforms.build_transform`).
        missing_table: presence per sample id, or None (only genuine gaps).
        missing_image: ``"ones"`` | ``"zeros"`` | ``"token"``.
        combine: image modality -> ``"stack"`` (default; K images -> [K, 3, H, W])
            or ``"hconcat"`` (images side by side as one, e.g. ODIR left+right).
        allow_missing_keys: let image modalities absent from every record go
            without a transform.
        train: random choices of training (``one``: a random file; ``slices``: jitter).
        read_options: slice and window choices for volumes and wide-range images.
        on_bad_sample: ``"stop"`` (raise) or ``"skip"`` (a skipped item) for a sample
            that cannot be read.
    """

    def __init__(
        self,
        records: Sequence[Record],
        modalities: Sequence[str],
        kinds: Mapping[str, str],
        transforms: Mapping[str, Transform],
        missing_table: MissingTable | None = None,
        missing_image: str = "ones",
        combine: Mapping[str, str] | None = None,
        allow_missing_keys: bool = False,
        train: bool = False,
        read_options: ReadOptions | None = None,
        on_bad_sample: str = "stop",
    ) -> None:
        check_modalities(modalities, kinds)
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ConfigError(
                f"train.on_bad_sample: expected one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}"
            )
        self.records = list(records)
        self.modalities = tuple(modalities)
        self.kinds = dict(kinds)
        self.image_modalities = [m for m in self.modalities if kinds[m] == "image"]
        self.text_modality = next((m for m in self.modalities if kinds[m] == "text"), None)
        self.transforms = dict(transforms)
        self.missing_table = missing_table
        self.missing_image = check_missing_image(missing_image)
        self.combine = {m: (combine or {}).get(m, "stack") for m in self.image_modalities}
        self.train = train
        self.read_options = read_options or ReadOptions()
        self.read_image = load_image  # or a `medpeft.data.cache.ImageCache` (same signature)
        self.on_bad_sample = on_bad_sample
        self._check(allow_missing_keys)
        self.counts = {m: self._image_count(m) for m in self.image_modalities}
        self._fill_shapes: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_source(
        cls,
        source: Source,
        split: str | None,
        transforms: Mapping[str, Transform],
        missing_table: MissingTable | None = None,
        missing_image: str = "ones",
        allow_missing_keys: bool = False,
        train: bool = False,
        read_options: ReadOptions | None = None,
        on_bad_sample: str = "stop",
    ) -> Dataset:
        """Dataset of one split of ``source`` (None: its unsplit records), with its modalities,
        kinds and combine modes."""
        return cls(
            source.split(split), source.modalities, source.kinds, transforms, missing_table,
            missing_image, source.combine, allow_missing_keys, train, read_options, on_bad_sample,
        )

    @property
    def targets(self) -> list[Target]:
        """Targets of all samples, without loading any image (for balanced sampling)."""
        return [r.target for r in self.records]

    def _check(self, allow_missing_keys: bool) -> None:
        extra = sorted(set(self.transforms) - set(self.image_modalities))
        if extra:
            raise ConfigError(f"transforms for {extra}: not image modalities of {self.modalities}")
        for m in self.image_modalities:
            parse_combine(self.combine[m])
            if m in self.transforms:
                continue
            if not allow_missing_keys:
                raise ConfigError(
                    f"no transform for image modality {m!r} (allow_missing_keys=True lets "
                    "a modality absent from every record go without one)"
                )
            if any(has_value(r.values.get(m)) for r in self.records):
                raise ConfigError(f"no transform for image modality {m!r}, which has images")
        if self.missing_table is not None and self.missing_table.modalities != self.modalities:
            have = self.missing_table.modalities
            raise ConfigError(f"missing table modalities {have} != dataset {self.modalities}")

    def _image_count(self, m: str) -> int:
        """Images per sample of modality ``m`` after combining (all samples must agree)."""
        mode, slices = parse_combine(self.combine[m])
        if mode in ("hconcat", "one"):
            return 1
        if mode == "slices":
            return slices
        sized = [r for r in self.records if has_value(r.values.get(m))]
        expected = len(sized[0].values[m]) if sized else 1
        for r in sized:
            if len(r.values[m]) != expected:
                raise DataError(
                    f"{r.where or r.id} column {m!r}: has {len(r.values[m])} images, "
                    f"earlier samples have {expected}"
                )
        return expected

    def _fill_shape(self, m: str) -> tuple[int, ...]:
        """Shape of a missing image of ``m``: that of its first real image, else another's."""
        if m not in self._fill_shapes:
            self._fill_shapes[m] = self._first_image_shape(m)
        return self._fill_shapes[m]

    def _first_image_shape(self, m: str) -> tuple[int, ...]:
        for other in (m, *self.image_modalities):
            for record in (r for r in self.records if has_value(r.values.get(other))):
                try:
                    shape = tuple(self._load(record, other).shape)
                except DataError:
                    if self.on_bad_sample == "stop":
                        raise
                    continue  # skipped where it is read; size the fill by another sample
                return shape if other == m else shape[-3:]
        raise DataError(f"modality {m!r}: no sample has any image; cannot size a missing one")

    def __len__(self) -> int:
        return len(self.records)

    def presence(self, index: int) -> tuple[bool, ...]:
        """Presence of each modality for sample ``index`` (table and genuine gaps combined)."""
        record = self.records[index]
        available = record.available(self.modalities)
        if self.missing_table is None:
            return available
        return effective_presence(self.missing_table.presence(record.id), available)

    def _load(self, record: Record, m: str) -> torch.Tensor:
        paths = record.values[m]
        mode, slices = parse_combine(self.combine[m])
        try:
            if mode == "one":
                pick = paths[int(torch.randint(len(paths), ()))] if self.train else min(paths)
                images = [self.read_image(pick, options=self.read_options)]
            elif mode == "slices":
                images = self._slices(record, m, slices)
            else:
                images = [self.read_image(p, options=self.read_options) for p in paths]
        except (OSError, ValueError) as err:  # DataError is a ValueError; each names its file
            raise DataError(f"{record.where or record.id} column {m!r}: {err}") from err
        if mode == "hconcat":
            images = [hconcat_images(images)]
        tensors = [self.transforms[m](im) for im in images]
        return tensors[0] if self.counts[m] == 1 else torch.stack(tensors)

    def _slices(self, record: Record, m: str, count: int) -> list[Image.Image]:
        """``count`` evenly spaced slices of the record's one volume file of ``m``."""
        paths = record.values[m]
        if len(paths) != 1:
            raise DataError(f"{record.where or record.id} column {m!r}: 'slices' needs one volume file")
        depth = volume_depth(paths[0], self.read_options.slice_axis)
        return [self.read_image(paths[0], i, self.read_options) for i in spaced_slices(depth, count, jitter=self.train)]

    def __getitem__(self, index: int) -> Item:
        try:
            return self._item(index)
        except DataError as err:
            if self.on_bad_sample == "stop":
                raise
            return {"skipped": str(err)}, target_tensor(self.records[index].target)

    def _item(self, index: int) -> Item:
        record = self.records[index]
        present = self.presence(index)
        inputs: dict = {
            "images": {},
            "present": torch.tensor(present, dtype=torch.bool),
            "sample": sample_name(record),
        }
        for i, m in enumerate(self.modalities):
            if m == self.text_modality:
                inputs["text"] = str(record.values.get(m, "")).strip() if present[i] else ""
            elif present[i]:
                inputs["images"][m] = self._load(record, m)
            else:
                inputs["images"][m] = fill_missing_image(self._fill_shape(m), self.missing_image)
        return inputs, target_tensor(record.target)
