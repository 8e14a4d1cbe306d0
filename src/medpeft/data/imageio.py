"""Read any supported medical or natural image file as an 8-bit RGB PIL image.

Formats, chosen by file extension:

* PNG, JPEG, BMP, TIFF, GIF, WebP: PIL. 16-bit and float images are min-max
  scaled to 8 bits instead of being clipped.
* DICOM (``.dcm``, ``.dicom``, or any file with the ``DICM`` marker): pydicom.
  Grey: rescale slope/intercept, then the first VOI window (centre/width) when
  present, else min-max; MONOCHROME1 is inverted so bone is bright. Colour
  (RGB, YBR as decoded by pydicom, palette) is kept. Multi-frame files:
  ``slice_index`` picks the frame (default the middle one).
* NIfTI (``.nii``, ``.nii.gz``): nibabel. 4D+ data uses the first volume; a 2D
  slice is taken along the last spatial axis (default the middle one), rotated
  90 degrees for display and scaled between its 1st and 99th percentiles.
* NumPy ``.npy``: ``(H, W)``, ``(H, W, 3|4)`` image, or ``(S, H, W)`` volume
  (slice axis first, as in MRNet); uint8 is kept, other dtypes are min-max scaled.

Grey images are repeated to three channels. Every failure raises `DataError`
naming the file. pydicom and nibabel are optional: ``pip install medpeft[medical]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from medpeft.errors import DataError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES
NIFTI_PERCENTILES = (1.0, 99.0)


def has_image_suffix(path: str | Path) -> bool:
    """Whether ``path`` has the extension of a supported image format."""
    return str(path).lower().endswith(SUPPORTED_SUFFIXES)


def load_image(path: str | Path, slice_index: int | None = None) -> Image.Image:
    """Load an image file as an RGB PIL image.

    Args:
        path: image file (see the module docstring for formats).
        slice_index: frame/slice of a volume (DICOM multi-frame, NIfTI, 3D .npy);
            default the middle one. Ignored for 2D images.

    Raises:
        DataError: the file is missing, unreadable or of an unsupported type.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            array = _read_nifti(path, slice_index)
        elif name.endswith(NUMPY_SUFFIXES):
            array = _read_npy(path, slice_index)
        elif name.endswith(DICOM_SUFFIXES) or _has_dicom_marker(path):
            array = _read_dicom(path, slice_index)
        elif name.endswith(PIL_SUFFIXES):
            return _read_pil(path)
        else:
            raise DataError(
                f"unsupported image file {path}: expected one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
    except DataError:
        raise
    except Exception as err:  # any reader failure becomes one clear message
        raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
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


def _read_pil(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return to_rgb(scale_to_uint8(_finite(np.asarray(image), path)))
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


def _read_dicom(path: Path, slice_index: int | None) -> np.ndarray:
    pydicom = _import_optional("pydicom", path)
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise DataError(f"not a DICOM image (no pixel data): {path}")
    pixels = np.asarray(ds.pixel_array)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[_middle_or(slice_index, frames, path)]
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        pixels = pydicom.pixels.apply_color_lut(pixels, ds)
    if pixels.ndim == 3:
        return pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels)
    values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1)
    values += float(ds.get("RescaleIntercept", 0) or 0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        grey = scale_to_uint8(values, center - width / 2, center + width / 2)
    else:
        grey = scale_to_uint8(values)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _read_nifti(path: Path, slice_index: int | None) -> np.ndarray:
    nibabel = _import_optional("nibabel", path)
    image = nibabel.load(str(path))
    shape = image.shape
    if len(shape) < 2:
        raise DataError(f"{path}: NIfTI data of shape {shape} is not an image")
    if len(shape) == 2:
        plane = np.asarray(image.dataobj)
    else:
        index = (slice(None), slice(None), _middle_or(slice_index, shape[2], path))
        plane = np.asarray(image.dataobj[index + (0,) * (len(shape) - 3)])
    plane = np.rot90(plane.astype(np.float64))
    low, high = np.nanpercentile(plane, NIFTI_PERCENTILES)
    return scale_to_uint8(plane, float(low), float(high))


def _read_npy(path: Path, slice_index: int | None) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    is_colour = array.ndim == 3 and array.shape[2] in (3, 4)
    if array.ndim == 3 and not is_colour:
        array = array[_middle_or(slice_index, array.shape[0], path)]
    elif array.ndim not in (2, 3):
        raise DataError(
            f"{path}: expected an (H, W), (H, W, 3) or (S, H, W) array, got shape {array.shape}"
        )
    return array if array.dtype == np.uint8 else scale_to_uint8(_finite(array, path))
