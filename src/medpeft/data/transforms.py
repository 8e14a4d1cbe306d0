"""Image transforms in the timm style, built from pure-Python torchvision (v1) ops on PIL images.

Train: random resized crop (area 80-100%), horizontal flip, light brightness/
contrast jitter. Eval: resize so that the centre crop of ``img_size`` covers
``crop_pct`` of the shorter side, then centre crop; with ``keep_aspect=False``
the whole image is resized to ``img_size`` squared instead (no crop, nothing
cut off: useful for side-by-side or very elongated images). Both end with
ToTensor + Normalize.

``policy="ei"`` is the EI paper's training augmentation (its public code): rotation
by up to +-180 degrees, with probability 0.5 a crop of up to 10% from each side,
horizontal flip, resize to ``img_size`` squared, then contrast, brightness and
saturation each scaled by ``U(0.7, 1.3)`` (in that order). Its evaluation transform is
the plain resize (``keep_aspect=False``). `NORMALIZATIONS` holds the ImageNet and CLIP
mean/std (the EI code normalises every backbone with CLIP's).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from PIL import Image
from torchvision import transforms as T

from medpeft.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}
POLICIES = ("timm", "ei")
EI_ROTATION = 180.0
EI_CROP = (0.1, 0.5)  # largest fraction cut from each side, probability
EI_COLOUR = 0.3  # factors U(0.7, 1.3)
INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


def build_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    train: bool = False,
    interpolation: str = "bicubic",
    crop_pct: float = 1.0,
    scale: tuple[float, float] = (0.8, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.1,
    keep_aspect: bool = True,
    policy: str = "timm",
) -> Callable[[Image.Image], object]:
    """Build the train or eval transform for RGB PIL images.

    Args:
        img_size: output height and width.
        mean, std: per-channel normalisation (the backbone's pretraining values).
        train: random augmentation if True, deterministic resize + crop otherwise.
        interpolation: ``bicubic``, ``bilinear`` or ``nearest``.
        crop_pct: eval centre-crop fraction of the resized shorter side (timm's
            default is 0.875; 1.0 keeps the full field of view).
        scale: area range of the random resized crop.
        hflip: probability of a horizontal flip (0 disables it).
        color_jitter: brightness and contrast jitter strength (0 disables it).
        keep_aspect: eval only; False squashes the whole image to a square.
        policy: training augmentation, ``timm`` (above) or ``ei`` (the EI paper's; ``scale``
            and ``color_jitter`` do not apply).

    Returns:
        A callable mapping a PIL image to a normalised ``Tensor[3, img_size, img_size]``.
    """
    if img_size <= 0 or not 0 < crop_pct <= 1:
        raise ConfigError(f"need img_size > 0 and 0 < crop_pct <= 1, got {img_size}, {crop_pct}")
    if interpolation not in INTERPOLATIONS:
        known = list(INTERPOLATIONS)
        raise ConfigError(f"interpolation must be one of {known}, got {interpolation!r}")
    if policy not in POLICIES:
        raise ConfigError(f"data.augmentation: expected one of {list(POLICIES)}, got {policy!r}")
    mode = INTERPOLATIONS[interpolation]
    if train and policy == "ei":
        steps = ei_augmentation(img_size, hflip, mode)
    elif train:
        steps: list = [T.RandomResizedCrop(img_size, scale=scale, interpolation=mode)]
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        if color_jitter > 0:
            steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter))
    elif keep_aspect:
        steps = [
            T.Resize(math.floor(img_size / crop_pct), interpolation=mode),
            T.CenterCrop(img_size),
        ]
    else:
        steps = [T.Resize((img_size, img_size), interpolation=mode)]
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(steps)


class RandomSideCrop:
    """With probability ``p`` cut up to ``fraction`` of the width (height) from the left and
    the right (top and bottom), each amount drawn on its own (the EI code's crop)."""

    def __init__(self, fraction: float, p: float) -> None:
        self.fraction, self.p = fraction, p

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        width, height = image.size
        dx, dy = int(self.fraction * width), int(self.fraction * height)
        left, right = random.randint(0, dx), random.randint(0, dx)
        top, bottom = random.randint(0, dy), random.randint(0, dy)
        return image.crop((left, top, width - right, height - bottom))


def ei_augmentation(img_size: int, hflip: float, mode: T.InterpolationMode) -> list:
    """The EI paper's training steps before ToTensor (see the module docstring)."""
    steps: list = [T.RandomRotation(EI_ROTATION, interpolation=T.InterpolationMode.BILINEAR),
                   RandomSideCrop(*EI_CROP)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    steps.append(T.Resize((img_size, img_size), interpolation=mode))
    steps += [T.ColorJitter(**{name: EI_COLOUR}) for name in ("contrast", "brightness", "saturation")]
    return steps


class ImageGeometry(Protocol):
    """What `image_transforms` reads of a model's preprocessing
    (`medpeft.adapters_io.config.Preprocessing` has it)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    interpolation: str
    crop: float
    resize: str


def image_transforms(
    kinds: Mapping[str, str],
    combine: Mapping[str, str],
    pre: ImageGeometry,
    augment: bool,
    hflip: float = 0.5,
    policy: str = "timm",
) -> dict:
    """Per image modality: resize + normalise, augmented (``policy``) when ``augment``.

    Side-by-side (``hconcat``) modalities are never flipped: a flip swaps the images.
    """
    return {
        m: build_transform(
            pre.size, pre.mean, pre.std, train=augment, interpolation=pre.interpolation,
            crop_pct=pre.crop, keep_aspect=pre.resize == "crop",
            hflip=0.0 if combine.get(m) == "hconcat" else hflip, policy=policy,
        )
        for m, kind in kinds.items()
        if kind == "image"
    }
