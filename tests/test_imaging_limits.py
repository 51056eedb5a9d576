"""Hostile and broken inputs, generated here into tmp_path: each is refused fast, small and typed."""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tests.conftest import TEST_SECRET
from PIL import Image

from medagent.errors import (
    FileTooLarge,
    ImageInputError,
    ImageTooLarge,
    InputNotFound,
    PathOutsideWorkspace,
    TruncatedFile,
    UnsupportedFormat,
)
from medagent.imaging import Deidentifier, ImageLimits, ImageLoader

MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 32 * 2**20
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW, explicit VR little endian


def refused(loader: ImageLoader, path: Path | str, error: type[ImageInputError]) -> ImageInputError:
    """Load ``path`` expecting exactly ``error``, raised in under 1 s with a traced peak under 32 MB."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(ImageInputError) as caught:
            loader.load(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f} s"
    assert peak < MAX_PEAK_BYTES, f"peak {peak / 2**20:.1f} MiB"
    return caught.value


def limited(**limits: object) -> ImageLoader:
    return ImageLoader(Deidentifier(TEST_SECRET), ImageLimits(**limits))


def png_bytes(array: np.ndarray | None = None) -> bytes:
    if array is None:
        array = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A real PNG whose IHDR claims another size, CRC fixed so that decoders accept the header."""
    data = bytearray(png_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- size and pixel caps ----------------------------------------------------------


def test_file_over_size_cap(tmp_path: Path) -> None:
    error = refused(limited(max_file_bytes=100), write(tmp_path / "a.png", png_bytes()), FileTooLarge)
    assert error.details["limit"] == 100 and error.details["size"] > 100


def test_empty_file(loader: ImageLoader, tmp_path: Path) -> None:
    refused(loader, write(tmp_path / "empty.png", b""), TruncatedFile)


def test_png_decompression_bomb(loader: ImageLoader, tmp_path: Path) -> None:
    refused(loader, write(tmp_path / "bomb.png", png_declaring(200_000, 200_000)), ImageTooLarge)


def test_png_in_pillow_warning_range_meets_our_cap(tmp_path: Path) -> None:
    # 120 Mpx: Pillow only warns (DecompressionBombWarning) at open; our own cap must decide.
    path = write(tmp_path / "big.png", png_declaring(12_000, 10_000))
    error = refused(limited(max_pixels=100_000_000), path, ImageTooLarge)
    assert error.details == {"pixels": 120_000_000, "limit": 100_000_000}


def test_pixel_cap_on_normal_png(tmp_path: Path) -> None:
    error = refused(limited(max_pixels=1000), write(tmp_path / "a.png", png_bytes()), ImageTooLarge)
    assert error.details == {"pixels": 64 * 64, "limit": 1000}


# -- truncated and inconsistent files ---------------------------------------------


def test_dicom_element_length_past_end_of_file(loader: ImageLoader, pydicom_ct: Path, tmp_path: Path) -> None:
    data = pydicom_ct.read_bytes()
    at = data.index(PIXEL_DATA_HEADER) + len(PIXEL_DATA_HEADER)
    patched = data[:at] + struct.pack("<I", 0x7FFFFFF0) + data[at + 4 :]
    error = refused(loader, write(tmp_path / "long.dcm", patched), TruncatedFile)
    assert error.details["tag"] == "(7FE0,0010)"


def test_deflated_dicom_not_mistaken_for_truncated(loader: ImageLoader) -> None:
    # pydicom parses deflated files from an inflated copy: offsets there exceed the file size.
    from pydicom.data import get_testdata_file

    assert loader.load(get_testdata_file("image_dfl.dcm")).pixels.shape == (512, 512)


def test_dicom_pixel_data_cut_off(loader: ImageLoader, pydicom_ct: Path, tmp_path: Path) -> None:
    refused(loader, write(tmp_path / "cut.dcm", pydicom_ct.read_bytes()[:-2000]), TruncatedFile)


@pytest.mark.parametrize(
    ("header_class", "shape"),
    [(nib.Nifti1Header, (32767, 32767, 1000)), (nib.Nifti2Header, (100_000, 100_000, 1000))],
)
def test_nifti_header_with_huge_dimensions(
    loader: ImageLoader, tmp_path: Path, header_class: type, shape: tuple
) -> None:
    header = header_class()
    header.set_data_shape(shape)  # NIfTI-1 dims are int16, so its 'huge' is 32767 per axis
    header.set_data_dtype(np.int16)
    data = header.binaryblock + b"\0" * 4 + b"\0" * 16  # header, extension flag, a few voxel bytes
    refused(loader, write(tmp_path / "huge.nii", data), ImageTooLarge)


@pytest.mark.parametrize("name", ["half.nii", "half.nii.gz"])
def test_truncated_nifti(loader: ImageLoader, tmp_path: Path, name: str) -> None:
    volume = np.arange(16 * 16 * 8, dtype=np.float32).reshape(16, 16, 8)
    whole = tmp_path / f"whole-{name}"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), whole)
    assert loader.load(whole).pixels.shape == (16, 16, 8)  # the uncut file is fine
    data = whole.read_bytes()
    refused(loader, write(tmp_path / name, data[: len(data) // 2]), TruncatedFile)


def test_truncated_png(loader: ImageLoader, tmp_path: Path) -> None:
    data = png_bytes()
    refused(loader, write(tmp_path / "half.png", data[: len(data) // 2]), TruncatedFile)


@pytest.mark.parametrize("keep", ["half", "header"])
def test_truncated_jpeg(loader: ImageLoader, tmp_path: Path, keep: str) -> None:
    data = jpeg_bytes()
    cut = data[: len(data) // 2] if keep == "half" else data[:10]  # 'header': ends inside the APP0 segment
    refused(loader, write(tmp_path / "cut.jpg", cut), TruncatedFile)


# -- formats ------------------------------------------------------------------------


@pytest.mark.parametrize("pillow_format", ["BMP", "GIF"])
def test_format_outside_allow_list(loader: ImageLoader, tmp_path: Path, pillow_format: str) -> None:
    path = tmp_path / f"image.{pillow_format.lower()}"
    Image.new("L", (8, 8), 7).save(path, pillow_format)
    refused(loader, path, UnsupportedFormat)


def test_png_when_only_dicom_allowed(tmp_path: Path) -> None:
    only_dicom = limited(allowed_formats=frozenset({"dicom"}))
    error = refused(only_dicom, write(tmp_path / "a.png", png_bytes()), UnsupportedFormat)
    assert error.details["allowed"] == ["dicom"]


def test_text_file_named_dcm(loader: ImageLoader, tmp_path: Path) -> None:
    error = refused(loader, write(tmp_path / "scan.dcm", b"this is not a DICOM file\n" * 20), UnsupportedFormat)
    assert ".dcm" in str(error)


def test_constant_image_loads_without_nan_or_warnings(loader: ImageLoader, tmp_path: Path) -> None:
    path = write(tmp_path / "zeros.png", png_bytes(np.zeros((32, 32), dtype=np.uint8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = loader.load(path)
        view, flat = record.display(), record.as_2d()
    assert caught == []
    assert record.is_constant
    assert view.shape == (32, 32) and not np.isnan(view).any() and not view.any()
    assert not np.isnan(flat).any()


# -- paths --------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    write(tmp_path / "outside.png", png_bytes())
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    write(root / "inside.png", png_bytes())
    return root


@pytest.mark.parametrize("given", ["../outside.png", "link.png", "absolute"])
def test_paths_escaping_workspace(workspace: Path, given: str) -> None:
    loader = ImageLoader(Deidentifier(TEST_SECRET), workspace=workspace)
    path = workspace.parent / "outside.png" if given == "absolute" else given
    refused(loader, path, PathOutsideWorkspace)


def test_file_inside_workspace_loads(workspace: Path) -> None:
    loader = ImageLoader(Deidentifier(TEST_SECRET), workspace=workspace)
    assert loader.load("inside.png").pixels.shape == (64, 64)
    assert loader.load(workspace / "inside.png").source_format == "png"


def test_missing_file(loader: ImageLoader, tmp_path: Path) -> None:
    refused(loader, tmp_path / "nowhere.png", InputNotFound)


# -- no PHI from file names in messages ---------------------------------------------

PHI_NAME = "Doe_Jane_MRN123.dcm"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", TruncatedFile),
        (b"plain text, no DICOM here\n" * 10, UnsupportedFormat),
        ("ct-cut", TruncatedFile),
        (None, InputNotFound),
        ("outside", PathOutsideWorkspace),
        ("big", FileTooLarge),
    ],
)
def test_messages_never_contain_the_path(
    pydicom_ct: Path, tmp_path: Path, content: bytes | str | None, error: type[ImageInputError]
) -> None:
    path = tmp_path / PHI_NAME
    loader = ImageLoader(Deidentifier(TEST_SECRET), ImageLimits(max_file_bytes=10_000 if content == "big" else 2**29))
    if content in ("ct-cut", "big"):
        write(path, pydicom_ct.read_bytes()[:-2000])
    elif content == "outside":
        write(path, pydicom_ct.read_bytes())
        loader = ImageLoader(Deidentifier(TEST_SECRET), workspace=tmp_path / "ws")
    elif content is not None:
        write(path, content)
    raised = refused(loader, path, error)
    for text in (str(raised), json.dumps(raised.to_dict())):
        assert "Doe_Jane" not in text and "MRN123" not in text and str(tmp_path) not in text
