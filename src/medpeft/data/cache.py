"""A disk cache of decoded, shrunk images: epochs after the first skip decoding (``data.cache``).

Each image file is decoded once (any format `medpeft.data.imageio.load_image` reads:
DICOM, NIfTI, 16-bit PNG...), shrunk so that its shorter side is at most ``side`` pixels
(never enlarged) with the run's resize filter, and stored as a ``uint8`` ``.npy`` array.
The key is the file's absolute path, modification time and size, the slice and
windowing choices and the shrink (side, filter): an edited or replaced file misses
and is read again. Entries are written atomically, so loader workers and several
processes may share one folder.

A first (missing) read returns exactly the array it stores, so every epoch sees the
same images. With ``side`` = the evaluation resize (the shorter side before the centre
crop), evaluation is unchanged by the cache; training crops are taken from the shrunk
copy instead of the full-size file.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import transforms as T

from medpeft.atomic import atomic_write
from medpeft.data.imageio import ReadOptions, load_image
from medpeft.data.transforms import INTERPOLATIONS

CACHE_VERSION = 1  # bump when what an entry holds changes


def eval_resize_side(img_size: int, crop_pct: float) -> int:
    """The shorter side evaluation resizes to before its centre crop (`build_transform`)."""
    return math.floor(img_size / crop_pct)


def default_cache_dir() -> Path:
    """``$MEDPEFT_CACHE``, else ``$XDG_CACHE_HOME/medpeft/images``, else ``~/.cache/medpeft/images``."""
    if os.environ.get("MEDPEFT_CACHE"):
        return Path(os.environ["MEDPEFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medpeft" / "images"


class ImageCache:
    """Reads images like `load_image`, through the cache (picklable: fine in loader workers).

    Args:
        folder: Where entries live (created on the first write).
        side: Largest shorter side kept, in pixels.
        interpolation: Resize filter: ``bicubic``, ``bilinear`` or ``nearest``.
    """

    def __init__(self, folder: str | Path, side: int, interpolation: str = "bicubic") -> None:
        self.folder = Path(folder)
        self.side = side
        self.interpolation = interpolation
        self.resize = T.Resize(side, interpolation=INTERPOLATIONS[interpolation])

    def __call__(
        self, path: str | Path, slice_index: int | None = None, options: ReadOptions | None = None
    ) -> Image.Image:
        """The image of ``path`` (decoded and shrunk once, then read from the cache)."""
        if not Path(path).is_file():
            return load_image(path, slice_index, options)  # its DataError names the file
        entry = self.entry(path, slice_index, options)
        try:
            return Image.fromarray(np.load(entry, allow_pickle=False))
        except (OSError, ValueError):  # not cached yet (or an unreadable entry): read the file
            pass
        image = self.shrink(load_image(path, slice_index, options))
        array = np.asarray(image, dtype=np.uint8)
        atomic_write(entry, lambda tmp: _save_npy(tmp, array))
        return Image.fromarray(array)

    def shrink(self, image: Image.Image) -> Image.Image:
        """``image`` with its shorter side reduced to ``side`` (unchanged if already smaller)."""
        return image if min(image.size) <= self.side else self.resize(image)

    def entry(self, path: str | Path, slice_index: int | None, options: ReadOptions | None) -> Path:
        """The cache file of one read of ``path``."""
        source = Path(path).resolve()
        stat = source.stat()
        key = "|".join(map(str, (
            CACHE_VERSION, source, stat.st_mtime_ns, stat.st_size, slice_index,
            options or ReadOptions(), self.side, self.interpolation,
        )))
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, array, allow_pickle=False)
