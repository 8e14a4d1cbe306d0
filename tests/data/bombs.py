"""Files that declare (or inflate to) far more pixels than they hold on disk: decompression bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

CHUNK = 1 << 20


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` grey pixels; a few bytes of image data follow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64)))
            + chunk(b"IEND", b""))


def npy_declaring(shape: tuple[int, ...], dtype: str = "<u2") -> bytes:
    """A ``.npy`` file whose header declares ``shape`` but which holds 16 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(16)


def tiff_declaring(width: int, height: int) -> bytes:
    """A TIFF whose first page declares ``width x height`` grey pixels; 16 bytes of data follow."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 8 * 12 + 4), (278, 4, height), (279, 4, 16)]
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + bytes(4) + bytes(16)


def deflated_dicom(rows: int, columns: int, pixel_bytes: int | None = None, frames: int = 1) -> bytes:
    """A deflated DICOM of ``frames`` of ``rows x columns`` 16-bit pixels: zeros, ``pixel_bytes``
    of them (default all), streamed through zlib so the file stays around a thousandth of that."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = frames * rows * columns * 2 if pixel_bytes is None else pixel_bytes
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))]
    zeros = bytes(CHUNK)
    for start in range(0, length, CHUNK):
        parts.append(deflater.compress(zeros[: min(CHUNK, length - start)]))
    parts.append(deflater.flush())
    head = DicomBytesIO()
    head.write(bytes(128) + b"DICM")
    write_file_meta_info(head, meta)
    return head.getvalue() + b"".join(parts)


def nifti_declaring(shape: tuple[int, ...]) -> bytes:
    """A ``.nii`` file whose header declares ``shape`` (uint8) and which holds 16 bytes of data."""
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    return header.binaryblock + bytes(4) + bytes(16)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
