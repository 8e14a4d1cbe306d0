"""Image transforms in the timm style, built from pure-Python torchvision (v1) ops on PIL images.

Train: random resized crop (area 80-100%), horizontal flip, light brightness/
contrast jitter. Eval: resize so that the centre crop of ``img_size`` covers
``crop_pct`` of the shorter side, then centre crop; with ``keep_aspect=False``
the whole image is resized to ``img_size`` squared instead (no crop, nothing
cut off: useful for side-by-side or very elongated images). Both end with
ToTensor + Normalize.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from PIL import Image
from torchvision import transforms as T

from medpeft.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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

    Returns:
        A callable mapping a PIL image to a normalised ``Tensor[3, img_size, img_size]``.
    """
    if img_size <= 0 or not 0 < crop_pct <= 1:
        raise ConfigError(f"need img_size > 0 and 0 < crop_pct <= 1, got {img_size}, {crop_pct}")
    if interpolation not in INTERPOLATIONS:
        known = list(INTERPOLATIONS)
        raise ConfigError(f"interpolation must be one of {known}, got {interpolation!r}")
    mode = INTERPOLATIONS[interpolation]
    if train:
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
