"""Read any supported medical or natural image file as an 8-bit RGB PIL image.

Formats, chosen by file extension:

* PNG, JPEG, BMP, TIFF, GIF, WebP: PIL. 16-bit and float images are min-max
  scaled to 8 bits instead of being clipped.
* DICOM (``.dcm``, ``.dicom``, or any file with the ``DICM`` marker): pydicom,
  compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) through its
  pylibjpeg handlers. Grey: modality LUT (rescale slope/intercept), then the
  window (``ReadOptions.window``, else the file's first VOI window, else
  min-max); MONOCHROME1 is inverted so bone is bright. Colour (RGB, YBR as
  decoded by pydicom, palette) is kept. Multi-frame: one frame is decoded.
* NIfTI (``.nii``, ``.nii.gz``): nibabel. 4D+ data uses the first volume; a 2D
  slice is taken along ``slice_axis`` (default 2, the last spatial axis),
  rotated 90 degrees for display and scaled between its 1st and 99th percentiles.
* NumPy ``.npy``: ``(H, W)`` or ``(H, W, C)`` image (``C`` 1 or 2: grey, the
  first channel; 3 or 4: colour), or ``(S, H, W)`` volume (last axis longer than
  4; slice axis 0 by default, as in MRNet); uint8 is kept, other dtypes are
  min-max scaled. Never unpickled (``allow_pickle=False``).

Volumes (multi-frame DICOM, NIfTI, 3D ``.npy``) give the middle slice unless
``slice_index`` says otherwise. Grey images are repeated to three channels.
Images without pixels, NaN or infinite intensities are refused. Every failure raises `DataError`
naming the file, on one line. pydicom and nibabel are optional:
``pip install medpeft[medical]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from medpeft.errors import ConfigError, DataError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES
NIFTI_PERCENTILES = (1.0, 99.0)
NIFTI_SLICE_AXIS = 2
NUMPY_SLICE_AXIS = 0
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


@dataclass(frozen=True)
class ReadOptions:
    """How volumes and wide-range intensities become one 8-bit image.

    Attributes:
        slice_index: Frame of a multi-frame DICOM or slice of a volume (NIfTI, 3D
            ``.npy``); None = the middle one; negative counts from the end.
        slice_axis: Axis a NIfTI (0, 1 or 2; default 2) or 3D ``.npy`` (default 0)
            volume is sliced along.
        window: ``(centre, width)`` in the file's intensity units (Hounsfield units
            for CT) mapped to 0..255 for grey DICOM, NIfTI, ``.npy`` and 16-bit or
            float PNG/TIFF images; None = the DICOM file's window, else the format's
            default scaling. 8-bit images are kept as they are.
    """

    slice_index: int | None = None
    slice_axis: int | None = None
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            raise ConfigError(f"data.slice_axis: expected 0, 1 or 2, got {self.slice_axis!r}")
        if self.window is not None:
            if len(self.window) != 2 or not float(self.window[1]) > 0:
                raise ConfigError(f"data.window: expected [centre, width > 0], got {list(self.window)}")
            object.__setattr__(self, "window", (float(self.window[0]), float(self.window[1])))

    def limits(self) -> tuple[float, float] | None:
        """The window as ``(low, high)`` intensities, or None."""
        if self.window is None:
            return None
        centre, width = self.window
        return centre - width / 2, centre + width / 2


def has_image_suffix(path: str | Path) -> bool:
    """Whether ``path`` has the extension of a supported image format."""
    return str(path).lower().endswith(SUPPORTED_SUFFIXES)


def load_image(
    path: str | Path, slice_index: int | None = None, options: ReadOptions | None = None
) -> Image.Image:
    """Load an image file as an RGB PIL image.

    Args:
        path: image file (see the module docstring for formats).
        slice_index: frame/slice of a volume; overrides ``options.slice_index``.
        options: slice and window choices (default `ReadOptions()`).

    Raises:
        DataError: the file is missing, unreadable, of an unsupported type or holds
            non-finite intensities.
    """
    path = Path(path)
    options = options or ReadOptions()
    if slice_index is not None:
        options = ReadOptions(slice_index, options.slice_axis, options.window)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            array = _read_nifti(path, options)
        elif name.endswith(NUMPY_SUFFIXES):
            array = _read_npy(path, options)
        elif name.endswith(DICOM_SUFFIXES) or _has_dicom_marker(path):
            array = _read_dicom(path, options)
        elif name.endswith(PIL_SUFFIXES):
            return _read_pil(path, options)
        else:
            raise DataError(
                f"unsupported image file {path}: expected one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
    except DataError:
        raise
    except Exception as err:  # any reader failure becomes one clear line
        raise DataError(f"cannot read image {path}: {_reason(err)}") from err
    if array.size == 0:
        raise DataError(f"{path}: image of shape {array.shape} has no pixels")
    return to_rgb(array)


def to_rgb(array: np.ndarray) -> Image.Image:
    """RGB image from a uint8 ``(H, W)`` or ``(H, W, 3|4)`` array."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]))


def scale_to_uint8(
    array: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Linearly map ``[low, high]`` (default the array's min and max) to ``[0, 255]``."""
    array = np.asarray(array, dtype=np.float64)
    low = float(np.nanmin(array)) if low is None else low
    high = float(np.nanmax(array)) if high is None else high
    if not high > low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(array, nan=low) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _reason(err: BaseException) -> str:
    """An exception as one line, with the install hint for a missing DICOM decoder."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    if "missing dependencies" in text:
        text += " (pip install 'medpeft[medical]' installs the pylibjpeg decoders)"
    return text


def _windowed(
    values: np.ndarray,
    path: Path,
    options: ReadOptions,
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:
    """Finite grey ``values`` to uint8 through the option's window, else ``[low, high]``."""
    values = _finite(values, path)
    window = options.limits()
    return scale_to_uint8(values, *(window or (low, high)))


def _import_optional(module: str, path: Path) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DataError(f"reading {path} needs {module}: pip install 'medpeft[medical]'") from err


def _middle_or(index: int | None, count: int, path: Path) -> int:
    chosen = count // 2 if index is None else index
    if not -count <= chosen < count:
        raise DataError(f"{path}: slice index {index} out of range for {count} slices")
    return chosen % count


def _read_pil(path: Path, options: ReadOptions) -> Image.Image:
    with Image.open(path) as image:
        image.load()
    if image.mode in WIDE_MODES:
        return to_rgb(_windowed(np.asarray(image), path, options))
    return image.convert("RGB")


def _finite(array: np.ndarray, path: Path) -> np.ndarray:
    """``array``, or a DataError naming ``path`` if any pixel is NaN or infinite."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(
                f"{path}: {bad} of {array.size} pixels are NaN or infinite; expected finite "
                "intensities (fix or drop the file)"
            )
    return array


def _has_dicom_marker(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _first(value: object) -> float:
    """First value of a possibly multi-valued DICOM element."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)


def _read_dicom(path: Path, options: ReadOptions) -> np.ndarray:
    pydicom = _import_optional("pydicom", path)
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise DataError(f"not a DICOM image (no pixel data): {path}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = _middle_or(options.slice_index, frames, path) if frames > 1 else None
    pixels = np.asarray(pydicom.pixels.pixel_array(ds, index=frame))
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        pixels = pydicom.pixels.apply_color_lut(pixels, ds)
    if pixels.ndim == 3:
        return pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels)
    values = np.asarray(pydicom.pixels.apply_modality_lut(pixels, ds), dtype=np.float64)
    low = high = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        low, high = centre - width / 2, centre + width / 2
    grey = _windowed(values, path, options, low, high)
    return 255 - grey if photometric == "MONOCHROME1" else grey


def _read_nifti(path: Path, options: ReadOptions) -> np.ndarray:
    nibabel = _import_optional("nibabel", path)
    image = nibabel.load(str(path))
    shape = image.shape
    if len(shape) < 2:
        raise DataError(f"{path}: NIfTI data of shape {shape} is not an image")
    if len(shape) == 2:
        plane = np.asarray(image.dataobj)
    else:
        axis = NIFTI_SLICE_AXIS if options.slice_axis is None else options.slice_axis
        index: list = [slice(None)] * 3 + [0] * (len(shape) - 3)
        index[axis] = _middle_or(options.slice_index, shape[axis], path)
        plane = np.asarray(image.dataobj[tuple(index)])
    plane = _finite(np.rot90(plane.astype(np.float64)), path)
    low, high = np.percentile(plane, NIFTI_PERCENTILES)
    return _windowed(plane, path, options, float(low), float(high))


def _read_npy(path: Path, options: ReadOptions) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if array.ndim == 3 and array.shape[2] in (1, 2):  # grey (+ alpha)
        array = array[:, :, 0]
    is_colour = array.ndim == 3 and array.shape[2] in (3, 4)
    if array.ndim == 3 and not is_colour:
        axis = NUMPY_SLICE_AXIS if options.slice_axis is None else options.slice_axis
        array = np.take(array, _middle_or(options.slice_index, array.shape[axis], path), axis)
    elif array.ndim not in (2, 3):
        raise DataError(
            f"{path}: expected an (H, W), (H, W, C<=4) or (S, H, W) array, got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        return array
    return _windowed(array, path, options) if array.ndim == 2 else scale_to_uint8(_finite(array, path))
