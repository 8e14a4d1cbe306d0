"""load_image: every format to 8-bit RGB, DICOM windowing, volume slices, clear errors."""

import os
import sys
import tracemalloc
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as nibabel_data
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medpeft.data.imageio import ReadOptions, load_image
from medpeft.errors import ConfigError, DataError
from tests.data import bombs

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def write_dicom(path, pixels, photometric="MONOCHROME2", **elements):
    """A minimal uncompressed 16-bit greyscale DICOM file."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(np.asarray(pixels, dtype=np.uint16), photometric, 16)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def pixels(image):
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.ndim == 3 and array.shape[2] == 3
    return array


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tiff"])
def test_pil_formats_grey_become_rgb(tmp_path, suffix):
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    path = tmp_path / f"img{suffix}"
    Image.fromarray(grey).save(path)
    array = pixels(load_image(path))
    assert array.shape == (16, 16, 3)
    assert (array[..., 0] == array[..., 2]).all()
    assert abs(int(array[0, -1, 0]) - 240) <= 4


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(path)
    array = pixels(load_image(path))[..., 0]
    assert array.tolist() == [[0, 64], [128, 255]]


def test_pydicom_example_ct():
    array = pixels(load_image(PYDICOM_FILES / "CT_small.dcm"))
    assert array.shape == (128, 128, 3)
    assert array.std() > 10


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    raw = np.tile([[0, 1000], [2000, 3000]], (2, 2))
    path = write_dicom(
        tmp_path / "a.dcm", raw, "MONOCHROME1",
        RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000,
    )
    # values -1000, 1000, 3000, 5000 -> window [0, 2000] -> 0, 128, 255, 255 -> inverted
    assert pixels(load_image(path))[:2, :2, 0].tolist() == [[255, 127], [0, 0]]


def test_dicom_without_window_is_min_max_and_found_without_extension(tmp_path):
    path = write_dicom(tmp_path / "IM0001", [[10, 20], [30, 50]])
    assert pixels(load_image(path))[..., 1].tolist() == [[0, 64], [128, 255]]


def test_nibabel_example_volume_middle_slice():
    array = pixels(load_image(os.path.join(nibabel_data, "example4d.nii.gz")))
    assert array.shape == (96, 128, 3)  # (x=128, y=96) shown rotated: rows = y
    assert array.std() > 10


def test_nifti_slice_choice(tmp_path):
    volume = np.zeros((6, 6, 5), dtype=np.float32)
    for k in range(5):
        volume[:, : k + 1, k] = 100.0  # slice k: k+1 bright columns of y
    path = tmp_path / "vol.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), path)
    bright = [(pixels(load_image(path, slice_index=k))[..., 0] > 128).sum() for k in (None, 0, 4)]
    assert bright == [18, 6, 30]


def test_npy_images_and_volumes(tmp_path):
    colour = np.zeros((4, 5, 3), dtype=np.uint8)
    colour[..., 0] = 200
    np.save(tmp_path / "rgb.npy", colour)
    assert pixels(load_image(tmp_path / "rgb.npy"))[0, 0].tolist() == [200, 0, 0]
    np.save(tmp_path / "grey.npy", np.array([[0.0, 0.5], [1.0, 2.0]]))
    assert pixels(load_image(tmp_path / "grey.npy"))[..., 0].tolist() == [[0, 64], [128, 255]]
    volume = np.stack([np.full((4, 6), k, dtype=np.uint8) for k in range(5)])
    np.save(tmp_path / "vol.npy", volume)
    assert pixels(load_image(tmp_path / "vol.npy"))[0, 0, 0] == 2
    assert pixels(load_image(tmp_path / "vol.npy", slice_index=-1))[0, 0, 0] == 4
    with pytest.raises(DataError, match="slice index 7 out of range"):
        load_image(tmp_path / "vol.npy", slice_index=7)


def test_missing_unsupported_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match="not found: .*absent.png"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported image file .*notes.txt"):
        load_image(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(DataError, match="no pixel data.*rtplan.dcm"):
        load_image(PYDICOM_FILES / "rtplan.dcm")
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(DataError, match="bad.npy.*shape"):
        load_image(tmp_path / "bad.npy")


def test_missing_optional_reader_says_how_to_install(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", [[1, 2], [3, 4]])
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"a\.dcm needs pydicom.*medpeft\[medical\]"):
        load_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fill", ["all", "one"])
def test_non_finite_pixels_are_rejected_naming_the_file(tmp_path, bad, fill):
    array = np.full((8, 8), bad) if fill == "all" else np.arange(64, dtype=np.float32).reshape(8, 8)
    if fill == "one":
        array[3, 4] = bad
    path = tmp_path / "scan.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=r"scan\.npy: \d+ of 64 pixels are NaN or infinite"):
        load_image(path)


def test_non_finite_float_tiff_is_rejected(tmp_path):
    path = tmp_path / "scan.tif"
    array = np.ones((8, 8), dtype=np.float32)
    array[0, 0] = np.nan
    Image.fromarray(array, mode="F").save(path)
    with pytest.raises(DataError, match=r"scan\.tif: 1 of 64 pixels"):
        load_image(path)


BOMBS = {  # file: (its bytes, the refusal)
    "deflated.dcm": (lambda: bombs.deflated_dicom(8000, 8000),  # 122 kB inflating to 128 MB
                     r"deflated\.dcm: image of 8000 x 8000 = 64,000,000 pixels is over the limit of "
                     r"60,000,000 pixels \(data\.max_pixels, medpeft serve --max-pixels\); refused before decoding"),
    "frames.dcm": (lambda: bombs.deflated_dicom(1000, 1000, pixel_bytes=16, frames=1000),
                   r"frames\.dcm: declares an array of shape \(1000, 1000, 1000, 1\) \(1,907.3 MiB\), over the "
                   r"limit of 915.5 MiB per file \(16 bytes per pixel of the 60,000,000-pixel limit"),
    "declared.png": (lambda: bombs.png_declaring(10000, 10000),
                     r"declared\.png: image of 10000 x 10000 = 100,000,000 pixels is over the limit"),
    "huge.png": (lambda: bombs.png_declaring(20000, 20000),  # PIL's own refusal, reworded
                 r"huge\.png: image of 400,000,000 pixels is over the limit of 60,000,000 pixels"),
    "page.tif": (lambda: bombs.tiff_declaring(9000, 9000),
                 r"page\.tif: image of 9000 x 9000 = 81,000,000 pixels is over the limit"),
    "image.npy": (lambda: bombs.npy_declaring((30000, 30000)),
                  r"image\.npy: image of 30000 x 30000 = 900,000,000 pixels is over the limit"),
    "volume.npy": (lambda: bombs.npy_declaring((4000, 512, 512)),
                   r"volume\.npy: declares an array of shape \(4000, 512, 512\) \(2,000.0 MiB\), over the limit"),
    "image.nii": (lambda: bombs.nifti_declaring((30000, 30000)),
                  r"image\.nii: image of 30000 x 30000 = 900,000,000 pixels is over the limit"),
    "volume.nii": (lambda: bombs.nifti_declaring((512, 512, 4000)),
                   r"volume\.nii: declares an array of shape \(512, 512, 4000\) \(1,000.0 MiB\), over the limit"),
}


@pytest.mark.filterwarnings("error")  # and no warning of PIL's or pydicom's on the way
@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_are_refused_from_the_declared_size(tmp_path, name):
    make, message = BOMBS[name]
    path = bombs.write(tmp_path / name, make())
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message) as refused:
            load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(refused.value)
    assert peak < 16 * 2**20  # nothing near the declared size was inflated or allocated


def test_the_pixel_limit_is_an_option_and_applies_to_the_slice_read(tmp_path):
    path = tmp_path / "scan.png"
    Image.new("L", (40, 30)).save(path)
    with pytest.raises(DataError, match=r"scan\.png: image of 40 x 30 = 1,200 pixels is over the limit of 1,000"):
        load_image(path, options=ReadOptions(max_pixels=1000))
    assert load_image(path, options=ReadOptions(max_pixels=1200)).size == (40, 30)
    volume = tmp_path / "vol.npy"
    np.save(volume, np.zeros((40, 20, 10), dtype=np.uint8))  # 40 slices of 20 x 10
    assert load_image(volume, options=ReadOptions(max_pixels=600)).size == (10, 20)
    with pytest.raises(DataError, match=r"vol\.npy: image of 20 x 40 = 800 pixels"):  # slices along x
        load_image(volume, options=ReadOptions(slice_axis=2, max_pixels=600))
    with pytest.raises(ConfigError, match=r"data\.max_pixels: expected a whole number of pixels >= 1, got 0"):
        ReadOptions(max_pixels=0)


def test_a_deflated_dicom_inflates_no_further_than_the_limit(tmp_path):
    # declares 100 x 100 pixels, but its pixel data element inflates to 50 MB
    path = bombs.write(tmp_path / "padded.dcm", bombs.deflated_dicom(100, 100, pixel_bytes=50_000_000))
    with pytest.raises(DataError, match=r"padded\.dcm: the deflated DICOM data set inflates to more than 1.5 MiB"):
        load_image(path, options=ReadOptions(max_pixels=100_000))
    small = bombs.write(tmp_path / "small.dcm", bombs.deflated_dicom(64, 64))
    assert load_image(small, options=ReadOptions(max_pixels=64 * 64)).size == (64, 64)
