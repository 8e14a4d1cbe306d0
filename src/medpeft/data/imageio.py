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

Decompression bombs: every reader checks the size a file declares (DICOM Rows x
Columns x frames x samples, the NIfTI header's shape, the ``.npy`` header, the
PIL image's size) before decoding anything. A 2-D image or the slice read from a
volume may hold at most ``ReadOptions.max_pixels`` pixels (`MAX_PIXELS` by
default); a whole file's declared array at most `VOLUME_BYTES_PER_PIXEL` bytes per
allowed pixel (`max_volume_bytes`), which also caps how far a deflated DICOM is
inflated.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from medpeft.errors import ConfigError, DataError
from medpeft.units import format_size

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES
NIFTI_PERCENTILES = (1.0, 99.0)
NIFTI_SLICE_AXIS = 2
NUMPY_SLICE_AXIS = 0
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")
MAX_PIXELS = 60_000_000  # per 2-D image or slice: well above a digital mammogram (4096 x 5120 = 21 M)
VOLUME_BYTES_PER_PIXEL = 16  # a file's declared array: 16 bytes per allowed pixel (915 MiB by default)
DICOM_HEADER_PROBE = 4 << 20  # inflated bytes of a deflated DICOM searched for its image size
DICOM_IMAGE_GROUP = 0x0028  # Rows, Columns, NumberOfFrames, SamplesPerPixel, BitsAllocated
LIMIT_HINT = "data.max_pixels, medpeft serve --max-pixels"


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
        max_pixels: Most pixels of a 2-D image or of the slice read from a volume; a
            file declaring more is refused before decoding (see `check_pixels`).
    """

    slice_index: int | None = None
    slice_axis: int | None = None
    window: tuple[float, float] | None = None
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ConfigError(f"data.max_pixels: expected a whole number of pixels >= 1, got {self.max_pixels!r}")
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


def max_volume_bytes(max_pixels: int) -> int:
    """Most bytes the array of one file may declare (a volume, or an image's samples)."""
    return max_pixels * VOLUME_BYTES_PER_PIXEL


def check_pixels(path: str | Path, height: int, width: int, max_pixels: int) -> None:
    """DataError naming ``path`` unless a ``height x width`` image holds at most ``max_pixels``."""
    if height * width > max_pixels:
        raise too_many_pixels(path, f"{width} x {height} = {height * width:,} pixels", max_pixels)


def check_volume(path: str | Path, shape: Sequence[int], itemsize: int, max_pixels: int) -> None:
    """DataError naming ``path`` if an array of ``shape`` declares more than `max_volume_bytes`."""
    size, limit = math.prod(shape) * itemsize, max_volume_bytes(max_pixels)
    if size > limit:
        raise DataError(
            f"{path}: declares an array of shape {tuple(shape)} ({format_size(size, 'MiB')}), over the "
            f"limit of {format_size(limit, 'MiB')} per file ({VOLUME_BYTES_PER_PIXEL} bytes per pixel of "
            f"the {max_pixels:,}-pixel limit, {LIMIT_HINT}); refused before decoding"
        )


def too_many_pixels(path: str | Path, size: str, max_pixels: int) -> DataError:
    """The refusal of an image of ``size`` (e.g. ``"4 x 3 = 12 pixels"``) over ``max_pixels``."""
    return DataError(
        f"{path}: image of {size} is over the limit of {max_pixels:,} pixels ({LIMIT_HINT}); "
        "refused before decoding"
    )


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
        options = dataclasses.replace(options, slice_index=slice_index)
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
    with _open_pil(path, options.max_pixels) as image:
        check_pixels(path, image.height, image.width, options.max_pixels)
        image.load()
    if image.mode in WIDE_MODES:
        return to_rgb(_windowed(np.asarray(image), path, options))
    return image.convert("RGB")


def _open_pil(path: Path, max_pixels: int) -> Image.Image:
    """``Image.open`` (lazy: the header only) with PIL's own bomb check no stricter than ours.

    PIL warns above ``Image.MAX_IMAGE_PIXELS`` (raised to ``max_pixels`` if lower) and
    refuses above twice it; `check_pixels` judges the size instead, so the warning is
    silenced and PIL's refusal is reworded as ours.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise too_many_pixels(path, f"{int(found.group(1)):,} pixels" if found else "too many pixels", max_pixels) from error


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
    ds = _dicom_dataset(pydicom, path, options.max_pixels)
    if "PixelData" not in ds:
        raise DataError(f"not a DICOM image (no pixel data): {path}")
    _check_dicom_size(ds, path, options.max_pixels)
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


def _dicom_dataset(pydicom: ModuleType, path: Path, max_pixels: int):
    """The data set of a DICOM file, pixels not decoded yet.

    A deflated file (the whole data set zlib-compressed) is inflated by `_inflate_dicom`:
    pydicom would inflate all of it at once, even to read the header.
    """
    reader = pydicom.filereader
    with path.open("rb") as f:
        preamble = reader.read_preamble(f, True)
        meta = reader._read_file_meta_info(f)
        if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            return pydicom.dcmread(path, force=True)
        compressed = f.read()
    data = _inflate_dicom(pydicom, path, compressed, max_pixels)
    dataset = reader.read_dataset(pydicom.filebase.DicomBytesIO(data), False, True)
    return pydicom.dataset.FileDataset(str(path), dataset, preamble, meta, False, True)


def _inflate_dicom(pydicom: ModuleType, path: Path, compressed: bytes, max_pixels: int) -> bytes:
    """The inflated data set of a deflated DICOM.

    Its image size is read from the first `DICOM_HEADER_PROBE` inflated bytes and
    checked; the rest is inflated no further than that size plus `DICOM_HEADER_PROBE`
    (other elements), and never beyond `max_volume_bytes`.
    """
    limit = max_volume_bytes(max_pixels)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(compressed, min(DICOM_HEADER_PROBE, limit))
    header = pydicom.filereader.read_dataset(
        pydicom.filebase.DicomBytesIO(head), False, True, stop_when=lambda tag, *_: tag.group > DICOM_IMAGE_GROUP
    )
    declared = _check_dicom_size(header, path, max_pixels)
    cap = limit if declared is None else min(limit, declared + DICOM_HEADER_PROBE)
    data = head + inflater.decompress(inflater.unconsumed_tail, max(1, cap - len(head)))
    if inflater.eof:
        return data
    if len(data) < cap:
        raise DataError(f"cannot read image {path}: the deflated data set is truncated")
    raise DataError(
        f"{path}: the deflated DICOM data set inflates to more than {format_size(cap, 'MiB')}, more than "
        f"its image size declares or the limit allows ({LIMIT_HINT}); refused before decoding"
    )


def _check_dicom_size(ds, path: Path, max_pixels: int) -> int | None:
    """The bytes of the frames a DICOM data set declares (None: no image size); DataError if a
    frame holds more than ``max_pixels`` or the frames more than `max_volume_bytes`."""
    if "Rows" not in ds or "Columns" not in ds:
        return None  # pydicom's decoder names what is missing
    rows, columns = int(ds.Rows or 0), int(ds.Columns or 0)
    check_pixels(path, rows, columns, max_pixels)
    shape = (int(ds.get("NumberOfFrames", 1) or 1), rows, columns, int(ds.get("SamplesPerPixel", 1) or 1))
    itemsize = math.ceil(int(ds.get("BitsAllocated", 8) or 8) / 8)
    check_volume(path, shape, itemsize, max_pixels)
    return math.prod(shape) * itemsize


def _read_nifti(path: Path, options: ReadOptions) -> np.ndarray:
    nibabel = _import_optional("nibabel", path)
    image = nibabel.load(str(path))  # the header only; data are read when sliced
    shape = image.shape
    if len(shape) < 2:
        raise DataError(f"{path}: NIfTI data of shape {shape} is not an image")
    axis = NIFTI_SLICE_AXIS if options.slice_axis is None else options.slice_axis
    _check_array_size(path, shape[:3], image.get_data_dtype().itemsize, axis if len(shape) > 2 else None, options)
    if len(shape) == 2:
        plane = np.asarray(image.dataobj)
    else:
        index: list = [slice(None)] * 3 + [0] * (len(shape) - 3)
        index[axis] = _middle_or(options.slice_index, shape[axis], path)
        plane = np.asarray(image.dataobj[tuple(index)])
    plane = _finite(np.rot90(plane.astype(np.float64)), path)
    low, high = np.percentile(plane, NIFTI_PERCENTILES)
    return _windowed(plane, path, options, float(low), float(high))


def _check_array_size(
    path: Path, shape: Sequence[int], itemsize: int, slice_axis: int | None, options: ReadOptions
) -> None:
    """Refuse an array whose read image (the plane across ``slice_axis``; None: the first two
    axes) holds more than ``options.max_pixels`` pixels, or which declares too many bytes."""
    plane = [n for i, n in enumerate(shape) if i != slice_axis][:2]
    check_pixels(path, *plane, options.max_pixels)
    check_volume(path, shape, itemsize, options.max_pixels)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, from its header (nothing else is read)."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _npy_slice_axis(shape: Sequence[int], options: ReadOptions) -> int | None:
    """The axis a ``.npy`` array is sliced along: None for a 2-D, grey or colour image."""
    if len(shape) == 3 and shape[2] not in (1, 2, 3, 4):
        return NUMPY_SLICE_AXIS if options.slice_axis is None else options.slice_axis
    return None


def _read_npy(path: Path, options: ReadOptions) -> np.ndarray:
    shape, dtype = _npy_header(path)
    axis = _npy_slice_axis(shape, options)
    if not dtype.hasobject:  # an object array is refused by np.load before any data is read
        if len(shape) not in (2, 3):
            raise DataError(f"{path}: expected an (H, W), (H, W, C<=4) or (S, H, W) array, got shape {shape}")
        _check_array_size(path, shape, dtype.itemsize, axis, options)
    array = np.load(path, allow_pickle=False)
    if array.ndim == 3 and array.shape[2] in (1, 2):  # grey (+ alpha)
        array = array[:, :, 0]
    if axis is not None:
        array = np.take(array, _middle_or(options.slice_index, array.shape[axis], path), axis)
    if array.dtype == np.uint8:
        return array
    return _windowed(array, path, options) if array.ndim == 2 else scale_to_uint8(_finite(array, path))
