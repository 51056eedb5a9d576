"""Every refusal of the image loaders, reached by one generated input each.

For each ``raise`` in medagent/imaging/{limits,loader,raster,nifti,dicom,series}.py there is an input
below (built in tmp_path from a real PNG, DICOM or NIfTI file) that reaches it, save a named few that no
input can reach (``UNREACHED``, each with its reason); a traced run of the table proves it raise by raise.
Each test asserts the exact error class and code, and that the message names neither the path nor any
value from the file.
"""

from __future__ import annotations

import ast
import gzip
import io
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from medagent import errors
from medagent.imaging import Deidentifier, ImageLimits, ImageLoader
from medagent.imaging.series import list_dicom_series, load_dicom_series
from tests.conftest import NIH_NO_FINDING, TEST_SECRET

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
    data[108:112] = struct.pack("<f", 1e30)  # vox_offset past any file: refused before a voxel is read
    return load(write(tmp / f"{TOKEN}.nii", bytes(data)))


def _nifti_rgb(tmp: Path) -> Callable[[], Any]:
    """An RGB NIfTI (datatype 128): nibabel reads the header, but its voxels have no float value."""
    import nibabel as nib

    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return load(write(tmp / f"{TOKEN}.nii", nib.Nifti1Image(rgb, np.eye(4)).to_bytes()))


def _nifti_pair(tmp: Path) -> Callable[[], Any]:
    """A NIfTI pair's header (.hdr, its voxels in .img beside it): only single-file NIfTI is read."""
    import nibabel as nib

    image = nib.Nifti1Pair(np.arange(256, dtype=np.int16).reshape(8, 8, 4), np.eye(4))
    nib.save(image, tmp / f"{TOKEN}.hdr")
    return load(tmp / f"{TOKEN}.hdr")


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
    # preamble and 'DICM', then a file meta element from the wrong group: not Part 10 (pydicom reads on, finds
    # no file meta and no pixels)
    return load(write(tmp / f"{TOKEN}.dcm", b"\0" * 128 + b"DICM" + b"\x08\x00\x20\x00DA\x08\x0020200101"
                      + b"\x10\x00\x10\x00PN\x0e\x00" + PATIENT.encode()))


def _strict_pydicom(build: Build) -> Build:
    """``build`` with pydicom raising where it otherwise warns (``reading_validation_mode = RAISE``, a global an
    application embedding medagent may set): its InvalidDicomError and EOFError then reach medagent."""
    def strict(tmp: Path) -> Callable[[], Any]:
        action = build(tmp)

        def run() -> Any:
            from pydicom import config

            previous = config.settings.reading_validation_mode
            config.settings.reading_validation_mode = config.RAISE
            try:
                return action()
            finally:
                config.settings.reading_validation_mode = previous
        return run
    return strict


def _dicom_unterminated(tmp: Path) -> Callable[[], Any]:
    # an OB element of undefined length after the pixels, whose sequence delimiter never comes
    tail = b"\xe1\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + b"\x01" * 64
    return load(write(tmp / f"{TOKEN}.dcm", ct_bytes() + tail))


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

    dataset.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: pydicom has no decoder for it
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
        rest = dict(options)  # a copy: a row is built again by the traced run below
        limits = ImageLimits(**rest.pop("limits", {}))
        return lambda: load_dicom_series(folder, Deidentifier(TEST_SECRET), limits, **rest)
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
    "nifti.not-single-file": (_nifti_pair, errors.CorruptFile),
    "nifti.offset-past-end": (_nifti_far_offset, errors.TruncatedFile),
    "nifti.voxels-unreadable": (_nifti_rgb, errors.CorruptFile),
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
    "dicom.unknown-vr-strict": (_strict_pydicom(_dicom_bad_vr), errors.UnsupportedFormat),
    "dicom.unterminated-element-strict": (_strict_pydicom(_dicom_unterminated), errors.TruncatedFile),
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


LOADERS = ("limits", "loader", "raster", "nifti", "dicom", "series")
IMAGING = Path(__file__).resolve().parents[1] / "medagent" / "imaging"
RaiseKey = tuple[str, str, str, int]
"""module, function, the raise statement's first line, its occurrence among identical lines in that function"""

# raises no input can reach, each with why; a key that matches no raise any more fails the test below
UNREACHED: dict[RaiseKey, str] = {
    ("raster", "load_raster", 'raise ImageTooLarge("image exceeds the decoder\'s hard pixel limit") from exc', 2):
        "Pillow raises DecompressionBombError in open(), refused by the first branch; load() re-checks nothing",
    ("nifti", "load_nifti", 'raise ResourceExhausted("not enough memory to read the NIfTI voxels") from None', 1):
        "needs real memory pressure while nibabel reads voxels that passed the size and pixel checks",
    ("dicom", "_check_declared_lengths",
     'raise CorruptFile(f"DICOM data elements could not be parsed ({type(exc).__name__})") from None', 1):
        "pydicom 3's Dataset.elements() yields raw elements without converting them (no deferred reads here)",
}


def _raise_statements() -> dict[RaiseKey, tuple[str, range]]:
    """Every ``raise`` in the loader modules: its key -> (file, its lines)."""
    found: dict[RaiseKey, tuple[str, range]] = {}
    for module in LOADERS:
        path = IMAGING / f"{module}.py"
        source = path.read_text()
        lines = source.splitlines()

        def visit(node: ast.AST, function: str) -> Iterator[tuple[str, ast.Raise]]:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Raise):
                    yield function, child
                inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
                yield from visit(child, inner)

        seen: dict[tuple[str, str], int] = {}
        for function, node in visit(ast.parse(source), "<module>"):
            text = lines[node.lineno - 1].strip()
            seen[function, text] = seen.get((function, text), 0) + 1
            found[module, function, text, seen[function, text]] = (
                str(path), range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return found


def _traced(action: Callable[[], Any], files: set[str]) -> set[tuple[str, int]]:
    """The (file, line) pairs of ``files`` that ``action`` executed, in this thread and any it starts."""
    executed: set[tuple[str, int]] = set()

    def lines(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "line":
            executed.add((frame.f_code.co_filename, frame.f_lineno))
        return lines

    def calls(frame: FrameType, _event: str, _arg: Any) -> Any:
        return lines if frame.f_code.co_filename in files else None  # other code runs untraced

    previous, previous_threads = sys.gettrace(), threading.gettrace()  # a coverage tracer, say: put back after
    threading.settrace(calls)
    sys.settrace(calls)
    try:
        action()
    except errors.MedagentError:
        pass
    finally:
        sys.settrace(previous)
        threading.settrace(previous_threads)
    return executed


def test_the_table_reaches_every_raise_in_the_loaders(tmp_path: Path) -> None:
    """Each row reaches a raise of the loaders, and every raise there is reached by a row or named in
    ``UNREACHED``: a new ``raise`` needs a new row (or a reason)."""
    statements = _raise_statements()
    files = {file for file, _ in statements.values()}
    reached: dict[RaiseKey, list[str]] = {}
    for index, (name, (build, _)) in enumerate(CASES.items()):
        folder = tmp_path / str(index)
        folder.mkdir()
        executed = _traced(build(folder), files)
        hits = [key for key, (file, lines) in statements.items() if any((file, line) in executed for line in lines)]
        assert hits, f"{name} reaches no raise in the loaders"
        for key in hits:
            reached.setdefault(key, []).append(name)
    missing = [key for key in statements if key not in reached and key not in UNREACHED]
    assert not missing, "raises no row reaches (add a row, or a reason to UNREACHED):\n" + "\n".join(map(str, missing))
    stale = [key for key in UNREACHED if key not in statements or key in reached]
    assert not stale, f"UNREACHED names raises that are gone or reached now: {stale}"


def test_series_listing_shares_the_scan_refusals(tmp_path: Path) -> None:
    with pytest.raises(errors.InputNotFound):
        list_dicom_series(write(tmp_path / "s" / f"{TOKEN}.txt", b"notes").parent, Deidentifier(TEST_SECRET))
