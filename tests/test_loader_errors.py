"""Every refusal of the image loaders, reached by one generated input each.

For each ``raise`` in medagent/imaging/{limits,loader,raster,nifti,dicom,series}.py there is an input
below (built in tmp_path from a real PNG, DICOM or NIfTI file) that reaches it. Each test asserts the
exact error class and code, and that the message names neither the path nor any value from the file.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from tests.conftest import NIH_NO_FINDING, TEST_SECRET

from medagent import errors
from medagent.imaging import Deidentifier, ImageLimits, ImageLoader
from medagent.imaging.series import load_dicom_series, list_dicom_series

TOKEN = "qz7token"  # in every generated file name: must never reach a message
PATIENT = "Zebulon^Qwerty"
PATIENT_ID = "PID-QZ-0042"
INSTITUTION = "Hospital Qzx7"
Build = Callable[[Path], Callable[[], Any]]


def loader(**limits: Any) -> ImageLoader:
    return ImageLoader(Deidentifier(TEST_SECRET), ImageLimits(**limits))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_bytes(array: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array if array is not None else np.asarray(Image.open(NIH_NO_FINDING))[:64, :64]).save(
        buffer, "PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    data = bytearray(png_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def ct() -> Dataset:
    """pydicom's real CT slice, with identifying values this test can look for in messages."""
    import pydicom.examples

    dataset = pydicom.dcmread(pydicom.examples.get_path("ct"))
    dataset.PatientName, dataset.PatientID, dataset.InstitutionName = PATIENT, PATIENT_ID, INSTITUTION
    return dataset


def ct_bytes(change: Callable[[Dataset], None] | None = None) -> bytes:
    dataset = ct()
    if change is not None:
        change(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def file_values() -> list[str]:
    dataset = ct()
    return [PATIENT, "Zebulon", PATIENT_ID, INSTITUTION, str(dataset.StudyInstanceUID),
            str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)]


def nifti_bytes(shape: tuple[int, ...] = (8, 8, 4)) -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape), np.eye(4))
    return image.to_bytes()


def series(folder: Path, count: int = 3, change: Callable[[int, Dataset], None] | None = None) -> Path:
    """``count`` copies of the CT slice 2.5 mm apart along its normal, one series."""
    uid = generate_uid()
    for k in range(count):
        dataset = ct()
        iop = np.array([float(v) for v in dataset.ImageOrientationPatient])
        base = np.array([float(v) for v in dataset.ImagePositionPatient])
        dataset.ImagePositionPatient = [float(v) for v in base + np.cross(iop[:3], iop[3:]) * 2.5 * k]
        dataset.InstanceNumber = k + 1
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = uid, generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        if change is not None:
            change(k, dataset)
        folder.mkdir(parents=True, exist_ok=True)
        dataset.save_as(folder / f"{TOKEN}{k:03d}.dcm")
    return folder


def load(path: Path, **limits: Any) -> Callable[[], Any]:
    return lambda: loader(**limits).load(path)


# -- one builder per raise ------------------------------------------------------------------------------


def _outside_workspace(tmp: Path) -> Callable[[], Any]:
    write(tmp / f"{TOKEN}.png", png_bytes())
    (tmp / "ws").mkdir()
    return lambda: ImageLoader(Deidentifier(TEST_SECRET), workspace=tmp / "ws").load(f"../{TOKEN}.png")


def _gzip_cut(tmp: Path) -> Callable[[], Any]:
    return load(write(tmp / f"{TOKEN}.nii.gz", gzip.compress(nifti_bytes())[:40]))


def _size_changed(tmp: Path) -> Callable[[], Any]:
    """A writer appends to the file between the size check and the read."""
    from medagent.imaging import loader as loader_module

    path = write(tmp / f"{TOKEN}.png", png_bytes())
    real_sniff = loader_module.sniff_format

    def sniff_then_append(found: Path, limits: ImageLimits) -> Any:
        with found.open("ab") as stream:
            stream.write(b"\0" * 16)
        return real_sniff(found, limits)

    def run() -> Any:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loader_module, "sniff_format", sniff_then_append)
            return loader().load(path)
    return run


def _dicom_bad_vr(tmp: Path) -> Callable[[], Any]:
    # the first file meta element's VR becomes 'ZZ': pydicom knows no such VR
    data = bytearray(ct_bytes())
    assert data[132:136] == b"\x02\x00\x00\x00"
    data[136:138] = b"ZZ"
    return load(write(tmp / f"{TOKEN}.dcm", bytes(data)))


def _nifti_bad_datatype(tmp: Path) -> Callable[[], Any]:
    data = bytearray(nifti_bytes())
    data[70:72] = struct.pack("<h", 9999)  # no such NIfTI datatype code: nibabel's HeaderDataError
    return load(write(tmp / f"{TOKEN}.nii", bytes(data)))


def _nifti_far_offset(tmp: Path) -> Callable[[], Any]:
    data = bytearray(nifti_bytes())
    data[108:112] = struct.pack("<f", 1e30)  # vox_offset past any file: numpy's memmap overflows
    return load(write(tmp / f"{TOKEN}.nii", bytes(data)))


def _nifti_no_dimensions(tmp: Path) -> Callable[[], Any]:
    data = bytearray(nifti_bytes())
    data[40:42] = struct.pack("<h", 0)  # dim[0] = 0: nibabel reads shape (0,), an image without voxels
    return load(write(tmp / f"{TOKEN}.nii", bytes(data)))


def _dicom_without_syntax(tmp: Path) -> Callable[[], Any]:
    def change(dataset: Dataset) -> None:
        del dataset.file_meta.TransferSyntaxUID
    return load(write(tmp / f"{TOKEN}.dcm", ct_bytes(change)))


def _dicom_sequence_bad_vr(tmp: Path) -> Callable[[], Any]:
    """An element inside the dataset gets an unknown VR: pydicom fails only when the value is converted."""
    data = bytearray(ct_bytes())
    at = data.index(b"\x08\x00\x08\x00CS")  # ImageType, explicit VR
    data[at + 4:at + 6] = b"QQ"
    return load(write(tmp / f"{TOKEN}.dcm", bytes(data)))


def _dicom_bad_rescale(tmp: Path) -> Callable[[], Any]:
    data = bytearray(ct_bytes())
    at = data.index(b"\x28\x00\x53\x10DS\x02\x00")  # RescaleSlope, 2 bytes
    data[at + 8:at + 10] = b"ab"  # not a decimal string
    return load(write(tmp / f"{TOKEN}.dcm", bytes(data)))


def _dicom_invalid(tmp: Path) -> Callable[[], Any]:
    # preamble and 'DICM', then a file meta element from the wrong group: not Part 10
    return load(write(tmp / f"{TOKEN}.dcm", b"\0" * 128 + b"DICM" + b"\x08\x00\x20\x00DA\x08\x0020200101"
                      + b"\x10\x00\x10\x00PN\x0e\x00" + PATIENT.encode()))


def _delete(*names: str) -> Callable[[Dataset], None]:
    def change(dataset: Dataset) -> None:
        for name in names:
            delattr(dataset, name)
    return change


def _set(**values: Any) -> Callable[[Dataset], None]:
    def change(dataset: Dataset) -> None:
        for name, value in values.items():
            setattr(dataset, name, value)
    return change


def _no_decoder(dataset: Dataset) -> None:
    from pydicom.encaps import encapsulate

    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder for it
    dataset.PixelData = encapsulate([b"\0\0\1\xb3" + b"\0" * 60])


def _bad_bits(dataset: Dataset) -> None:
    dataset.BitsAllocated = 12  # native data must be a multiple of 8 bits (or 1)


def _series_file_corrupt(tmp: Path) -> Callable[[], Any]:
    folder = series(tmp / "s", 2)
    write(folder / f"{TOKEN}bad.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\xff" * 12)
    return lambda: load_dicom_series(folder, Deidentifier(TEST_SECRET))


def _series_escape(tmp: Path) -> Callable[[], Any]:
    series(tmp / "outside", 2)
    (tmp / "ws").mkdir()
    return lambda: load_dicom_series(Path("../outside"), Deidentifier(TEST_SECRET), workspace=tmp / "ws")


def _series_link_escape(tmp: Path) -> Callable[[], Any]:
    outside = write(tmp / f"{TOKEN}out.dcm", ct_bytes())
    folder = tmp / "ws" / "s"
    folder.mkdir(parents=True)
    (folder / f"{TOKEN}link.dcm").symlink_to(outside)
    return lambda: load_dicom_series(Path("s"), Deidentifier(TEST_SECRET), workspace=tmp / "ws")


def _series_call(count: int, change: Callable[[int, Dataset], None] | None = None,
                 **options: Any) -> Build:
    def build(tmp: Path) -> Callable[[], Any]:
        folder = series(tmp / "s", count, change)
        limits = ImageLimits(**options.pop("limits", {}))
        return lambda: load_dicom_series(folder, Deidentifier(TEST_SECRET), limits, **options)
    return build


def _slice_changed(tmp: Path) -> Callable[[], Any]:
    """A slice is replaced by one of another size between the header pass and the pixel pass."""
    from medagent.imaging import series as series_module

    folder = series(tmp / "s", 2)
    real = series_module._order_and_geometry

    def order_then_replace(headers: list[Any]) -> Any:
        result = real(headers)
        small = ct()
        small.PixelData = small.pixel_array[:64, :64].tobytes()
        small.Rows, small.Columns = 64, 64
        small.save_as(headers[0].path)
        return result

    def run() -> Any:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(series_module, "_order_and_geometry", order_then_replace)
            return load_dicom_series(folder, Deidentifier(TEST_SECRET))
    return run


def _no_pixels_in_series(k: int, dataset: Dataset) -> None:
    if k == 1:
        del dataset.PixelData


def _tilt(k: int, dataset: Dataset) -> None:
    if k == 1:
        dataset.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def _same_position(k: int, dataset: Dataset) -> None:
    dataset.ImagePositionPatient = [0.0, 0.0, 0.0]


def _uneven(k: int, dataset: Dataset) -> None:
    dataset.ImagePositionPatient = [0.0, 0.0, float([0, 1, 5][k])]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _no_order(k: int, dataset: Dataset) -> None:
    del dataset.ImagePositionPatient
    del dataset.InstanceNumber


def _frames(k: int, dataset: Dataset) -> None:
    if k == 0:
        dataset.NumberOfFrames = 2


def _shapes(k: int, dataset: Dataset) -> None:
    if k == 0:
        dataset.PixelData = dataset.pixel_array[:64, :64].tobytes()
        dataset.Rows, dataset.Columns = 64, 64


CASES: dict[str, tuple[Build, type[errors.MedagentError]]] = {
    # limits.py
    "limits.outside-workspace": (_outside_workspace, errors.PathOutsideWorkspace),
    "limits.not-found": (lambda tmp: load(tmp / f"{TOKEN}.png"), errors.InputNotFound),
    "limits.file-too-large": (lambda tmp: load(write(tmp / f"{TOKEN}.png", png_bytes()), max_file_bytes=100),
                              errors.FileTooLarge),
    "limits.empty": (lambda tmp: load(write(tmp / f"{TOKEN}.png", b"")), errors.TruncatedFile),
    "limits.gzip-cut": (_gzip_cut, errors.TruncatedFile),
    "limits.unknown-format": (lambda tmp: load(write(tmp / f"{TOKEN}.bin", PATIENT.encode() * 50)),
                              errors.UnsupportedFormat),
    "limits.dcm-without-marker": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", PATIENT.encode() * 50)),
                                  errors.UnsupportedFormat),
    "limits.format-not-allowed": (lambda tmp: load(write(tmp / f"{TOKEN}.png", png_bytes()),
                                                   allowed_formats=frozenset({"dicom"})), errors.UnsupportedFormat),
    "limits.negative-dimension": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes(_set(NumberOfFrames="-3")))),
                                  errors.ImageTooLarge),
    "limits.too-many-pixels": (lambda tmp: load(write(tmp / f"{TOKEN}.png", png_bytes()), max_pixels=1000),
                               errors.ImageTooLarge),
    # loader.py
    "loader.size-changed": (_size_changed, errors.TruncatedFile),
    # raster.py
    "raster.bomb-at-open": (lambda tmp: load(write(tmp / f"{TOKEN}.png", png_declaring(200_000, 200_000))),
                            errors.ImageTooLarge),
    "raster.unidentified": (lambda tmp: load(write(tmp / f"{TOKEN}.png", b"\x89PNG\r\n\x1a\n" + b"\x07" * 64)),
                            errors.CorruptFile),
    "raster.header-cut": (lambda tmp: load(write(tmp / f"{TOKEN}.png", png_bytes()[:20])), errors.TruncatedFile),
    "raster.data-cut": (lambda tmp: load(write(tmp / f"{TOKEN}.png", png_bytes()[:200])), errors.TruncatedFile),
    # nifti.py
    "nifti.header-unparseable": (_nifti_bad_datatype, errors.CorruptFile),
    "nifti.no-dimensions": (_nifti_no_dimensions, errors.CorruptFile),
    "nifti.voxels-unreadable": (_nifti_far_offset, errors.CorruptFile),
    "nifti.too-many-voxels": (lambda tmp: load(write(tmp / f"{TOKEN}.nii", nifti_bytes()), max_pixels=100),
                              errors.ImageTooLarge),
    "nifti.declared-past-end": (lambda tmp: load(write(tmp / f"{TOKEN}.nii", nifti_bytes()[:-100])),
                                errors.TruncatedFile),
    "nifti.gz-voxels-cut": (lambda tmp: load(write(tmp / f"{TOKEN}.nii.gz",
                                                   gzip.compress(nifti_bytes((64, 64, 16)), mtime=0)[:-3000])),
                            errors.TruncatedFile),
    # dicom.py
    "dicom.invalid": (_dicom_invalid, errors.UnsupportedFormat),
    "dicom.unknown-vr": (_dicom_bad_vr, errors.CorruptFile),
    "dicom.unknown-vr-in-dataset": (_dicom_sequence_bad_vr, errors.CorruptFile),
    "dicom.no-transfer-syntax": (_dicom_without_syntax, errors.CorruptFile),
    "dicom.bad-rescale": (_dicom_bad_rescale, errors.CorruptFile),
    "dicom.length-past-end": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes()[:-2000])),
                              errors.TruncatedFile),
    "dicom.no-pixel-data": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes(_delete("PixelData")))),
                            errors.UnsupportedFormat),
    "dicom.no-rows": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes(_delete("Rows")))), errors.CorruptFile),
    "dicom.pixel-data-short": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes(_set(Rows=256)))),
                               errors.TruncatedFile),
    "dicom.too-many-pixels": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes()), max_pixels=1000),
                              errors.ImageTooLarge),
    "dicom.no-decoder": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes(_no_decoder))),
                         errors.UnsupportedFormat),
    "dicom.undecodable": (lambda tmp: load(write(tmp / f"{TOKEN}.dcm", ct_bytes(_bad_bits))), errors.TruncatedFile),
    # series.py
    "series.file-unparseable": (_series_file_corrupt, errors.CorruptFile),
    "series.dicom-not-allowed": (_series_call(2, limits={"allowed_formats": frozenset({"png"})}),
                                 errors.UnsupportedFormat),
    "series.outside-workspace": (_series_escape, errors.PathOutsideWorkspace),
    "series.link-outside-workspace": (_series_link_escape, errors.PathOutsideWorkspace),
    "series.not-a-folder": (lambda tmp: lambda: load_dicom_series(write(tmp / f"{TOKEN}.dcm", ct_bytes()),
                                                                  Deidentifier(TEST_SECRET)), errors.InputNotFound),
    "series.too-many-files": (_series_call(3, max_files=2), errors.ImageTooLarge),
    "series.no-dicom": (lambda tmp: lambda: load_dicom_series(write(tmp / "s" / f"{TOKEN}.txt", b"notes").parent,
                                                              Deidentifier(TEST_SECRET)), errors.InputNotFound),
    "series.unknown-series": (_series_call(2, series_uid="2.25.999"), errors.InputNotFound),
    "series.multi-frame": (_series_call(2, _frames), errors.UnsupportedFormat),
    "series.different-shapes": (_series_call(2, _shapes), errors.CorruptFile),
    "series.different-planes": (_series_call(2, _tilt), errors.ImageInputError),
    "series.shared-position": (_series_call(2, _same_position), errors.CorruptFile),
    "series.uneven-spacing": (_series_call(3, _uneven), errors.ImageInputError),
    "series.no-order": (_series_call(2, _no_order), errors.CorruptFile),
    "series.too-many-voxels": (_series_call(2, limits={"max_pixels": 128 * 128}), errors.ImageTooLarge),
    "series.slice-without-pixels": (_series_call(3, _no_pixels_in_series), errors.UnsupportedFormat),
    "series.slice-changed": (_slice_changed, errors.CorruptFile),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_refusal_is_typed_and_names_no_path_or_value(name: str, tmp_path: Path) -> None:
    build, expected = CASES[name]
    action = build(tmp_path)
    with pytest.raises(errors.MedagentError) as caught:
        action()
    error = caught.value
    assert type(error) is expected, f"{name}: expected {expected.__name__}, got {type(error).__name__}: {error}"
    assert error.code == expected.code and error.family == "tool_failure"
    text = f"{error.message} {error.to_dict()}"
    for secret in [str(tmp_path), tmp_path.name, TOKEN, *file_values()]:
        assert secret not in text, f"{name}: message carries {secret!r}: {text}"


def test_the_table_reaches_every_raise_in_the_loaders() -> None:
    """A new ``raise`` in the loaders needs a new row above: count them."""
    root = Path(__file__).resolve().parents[1] / "medagent" / "imaging"
    raises = sum(line.strip().startswith("raise ") for name in ("limits", "loader", "raster", "nifti", "dicom",
                                                                   "series")
                 for line in (root / f"{name}.py").read_text().splitlines())
    # not generated: Pillow's DecompressionBombError at load() (Pillow checks in open()); pydicom's EOFError
    # (pydicom 3 warns and stops at a short read); MemoryError while reading NIfTI voxels (needs memory pressure)
    unreachable = 3
    assert raises - unreachable <= len(CASES), f"{raises} raises, {len(CASES)} cases"


def test_series_listing_shares_the_scan_refusals(tmp_path: Path) -> None:
    with pytest.raises(errors.InputNotFound):
        list_dicom_series(write(tmp_path / "s" / f"{TOKEN}.txt", b"notes").parent, Deidentifier(TEST_SECRET))
