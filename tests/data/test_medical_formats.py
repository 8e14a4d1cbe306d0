"""Real medical files shipped with pydicom, pydicom-data and nibabel read as the pixels they hold.

Compressed DICOM files decode (through the pylibjpeg handlers) to the same image as
their uncompressed twins: exactly for lossless syntaxes, within a few grey levels for
lossy ones.
"""

import os

import nibabel
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as nibabel_data
from PIL import Image
from pydicom.data import get_testdata_file

from medpeft.data.imageio import ReadOptions, load_image
from medpeft.errors import ConfigError, DataError


def dicom(name: str) -> str:
    return get_testdata_file(name)


def grey(path, **kwargs) -> np.ndarray:
    array = np.asarray(load_image(path, **kwargs), dtype=np.int16)
    assert array.ndim == 3 and array.shape[2] == 3
    return array


@pytest.mark.parametrize(
    ("plain", "compressed", "frame", "mean_tolerance"),
    [
        ("MR_small.dcm", "MR_small_RLE.dcm", None, 0),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm", None, 0),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", None, 0),
        ("emri_small.dcm", "emri_small_RLE.dcm", 3, 0),  # multi-frame, one frame decoded
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", 7, 0),
        ("SC_rgb.dcm", "SC_rgb_rle.dcm", None, 0),
        ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm", None, 0),  # palette colour
        ("US1_UNCR.dcm", "US1_J2KR.dcm", None, 0),  # YBR_RCT -> RGB
        ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", None, 1.5),  # JPEG baseline, lossy
        ("MR2_UNCR.dcm", "MR2_J2KI.dcm", None, 3),  # JPEG 2000, lossy
    ],
)
def test_compressed_dicom_decodes_like_its_uncompressed_twin(plain, compressed, frame, mean_tolerance):
    expected = grey(dicom(plain), slice_index=frame)
    found = grey(dicom(compressed), slice_index=frame)
    assert found.shape == expected.shape and expected.std() > 5
    difference = np.abs(found - expected)
    assert difference.mean() <= mean_tolerance
    if mean_tolerance == 0:
        assert difference.max() == 0


def test_ct_rescale_to_hounsfield_units_then_a_configured_window():
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    centre, width = 40.0, 400.0  # soft-tissue window
    expected = np.round(np.clip((hu - (centre - width / 2)) / width, 0, 1) * 255)
    found = grey(dicom("CT_small.dcm"), options=ReadOptions(window=(centre, width)))[..., 0]
    assert np.array_equal(found, expected)
    assert not np.array_equal(found, grey(dicom("CT_small.dcm"))[..., 0])  # default: min-max


def test_the_file_window_is_used_unless_one_is_configured():
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    low = centre - width / 2
    expected = np.round(np.clip((ds.pixel_array - low) / width, 0, 1) * 255)
    assert np.array_equal(grey(dicom("MR_small.dcm"))[..., 0], expected)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(dicom("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "as_monochrome2.dcm")
    inverted, plain = grey(dicom("RG1_UNCR.dcm")), grey(tmp_path / "as_monochrome2.dcm")
    assert plain.std() > 10 and np.array_equal(inverted, 255 - plain)


def test_multi_frame_selection():
    frames = [grey(dicom("emri_small.dcm"), slice_index=k) for k in (None, 5, 0, -1, 9)]
    assert np.array_equal(frames[0], frames[1])  # 10 frames: the middle one is 5
    assert np.array_equal(frames[3], frames[4]) and not np.array_equal(frames[2], frames[4])
    assert np.array_equal(grey(dicom("liver.dcm"), slice_index=0), grey(dicom("liver_1frame.dcm")))
    with pytest.raises(DataError, match=r"emri_small\.dcm: slice index 10 out of range for 10"):
        load_image(dicom("emri_small.dcm"), slice_index=10)


def test_a_truncated_or_undecodable_dicom_is_one_line_naming_the_file():
    with pytest.raises(DataError, match=r"cannot read image .*MR_truncated\.dcm: ValueError") as err:
        load_image(dicom("MR_truncated.dcm"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"JPEG-lossy\.dcm: RuntimeError: Unable to decode") as err:
        load_image(dicom("JPEG-lossy.dcm"))  # a 12-bit lossy JPEG no installed decoder reads
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("axis", "shape"), [(0, (24, 96)), (1, (24, 128)), (2, (96, 128))])
def test_nifti_slices_along_any_axis(axis, shape):
    path = os.path.join(nibabel_data, "example4d.nii.gz")  # (128, 96, 24, 2)
    image = grey(path, options=ReadOptions(slice_axis=axis))
    assert image.shape == (*shape, 3) and image.std() > 5
    first = grey(path, options=ReadOptions(slice_index=1, slice_axis=axis))
    assert not np.array_equal(image, first)


def test_nifti_window_and_non_finite_values(tmp_path):
    volume = np.linspace(-1000, 1000, 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    path = tmp_path / "ct.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), path)
    windowed = grey(path, options=ReadOptions(window=(0, 100)))[..., 0]
    plane = np.rot90(volume[:, :, 1])
    assert np.array_equal(windowed, np.round(np.clip((plane + 50) / 100, 0, 1) * 255))
    volume[0, 0, 1] = np.nan
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), path)
    with pytest.raises(DataError, match=r"ct\.nii\.gz: 1 of 16 pixels are NaN"):
        load_image(path)
    assert np.asarray(load_image(path, slice_index=0)).std() > 0  # slice 0 is clean


def test_real_nifti_anatomical():
    image = grey(os.path.join(nibabel_data, "anatomical.nii"))
    assert image.ndim == 3 and image.std() > 5


def test_npy_volume_along_another_axis(tmp_path):
    volume = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    np.save(tmp_path / "vol.npy", volume)
    last = grey(tmp_path / "vol.npy", options=ReadOptions(slice_axis=2, slice_index=-1))
    assert np.array_equal(last[..., 0], volume[:, :, 4])
    assert np.array_equal(grey(tmp_path / "vol.npy")[..., 0], volume[1])  # default: axis 0, middle


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16_bit_images_are_scaled_not_clipped_and_take_a_window(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(np.array([[0, 1000], [30000, 60000]], dtype=np.uint16)).save(path)
    assert grey(path)[..., 0].tolist() == [[0, 4], [128, 255]]
    assert grey(path, options=ReadOptions(window=(1000, 2000)))[..., 0].tolist() == [[0, 128], [255, 255]]


@pytest.mark.parametrize(
    ("options", "key"), [({"slice_axis": 3}, "data.slice_axis"), ({"window": (40, 0)}, "data.window")]
)
def test_bad_read_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        ReadOptions(**options)
