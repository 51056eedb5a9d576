"""DICOM Part 10 loading: de-identify first, then rescale, invert and window."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medagent.errors import CorruptFile, TruncatedFile, UnsupportedFormat
from medagent.imaging.deid import Deidentifier
from medagent.imaging.limits import ImageLimits, check_pixel_count
from medagent.imaging.record import ImageRecord, Modality, SafeMetadata

_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # negative, positive direction per patient axis


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _float_or_none(value: Any) -> float | None:
    try:
        first = _first(value)
        return None if first in (None, "") else float(first)
    except (TypeError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    return text or None


def _read_dataset(data: bytes) -> Dataset:
    stream = io.BytesIO(data)  # a BytesIO read never allocates more than the bytes that exist
    try:
        return pydicom.dcmread(stream)
    except InvalidDicomError as exc:
        raise UnsupportedFormat("file has a DICOM marker but is not a valid DICOM Part 10 file") from exc
    except (EOFError, OSError) as exc:
        raise TruncatedFile("DICOM file ends inside a data element") from exc
    except Exception as exc:  # pydicom raises many types for malformed element headers
        raise CorruptFile(f"DICOM data elements could not be parsed ({type(exc).__name__})") from exc


def _check_declared_lengths(dataset: Dataset, file_size: int) -> None:
    """Refuse elements whose declared length reaches past the end of the file."""
    try:
        elements = list(dataset.elements())  # iterating converts sequences, which can fail on a malformed VR
    except Exception as exc:  # noqa: BLE001 - hostile files raise anything; re-raised typed, without the path
        raise CorruptFile(f"DICOM data elements could not be parsed ({type(exc).__name__})") from None
    for element in elements:
        length = getattr(element, "length", 0) or 0
        value_tell = getattr(element, "value_tell", 0) or 0
        if length != 0xFFFFFFFF and value_tell + length > file_size:
            raise TruncatedFile(
                f"element {element.tag} declares {length} bytes but the file ends first",
                tag=str(element.tag),
            )


def convert_all(dataset: Dataset) -> None:
    """Convert every raw element (file meta and nested sequences included) now, inside one ``try``.

    pydicom converts values lazily, on first access, and raises many types for malformed ones (an unknown
    VR, an undecodable value): converting up front turns all of them into one typed error before the
    de-identifier or anything else reads the dataset.
    """
    try:
        for _ in dataset.iterall():
            pass
        meta = getattr(dataset, "file_meta", None)
        if meta is not None:
            for _ in meta.iterall():
                pass
    except Exception as exc:  # noqa: BLE001 - hostile files raise anything; re-raised typed, without the path
        raise CorruptFile(f"DICOM data elements could not be parsed ({type(exc).__name__})") from None


def syntax_is(dataset: Dataset, flag: str) -> bool:
    """``is_deflated`` / ``is_compressed`` of the file's transfer syntax; False when it is missing or not one."""
    syntax = getattr(dataset, "file_meta", Dataset()).get("TransferSyntaxUID")
    try:  # UID(...): a file may give the element another VR, so the value arrives as a plain string
        return bool(syntax is not None and getattr(UID(str(syntax)), flag))
    except ValueError:  # a UID that is not a transfer syntax
        return False


def _syntax_name(dataset: Dataset) -> str:
    from pydicom.uid import UID_dictionary

    syntax = str(getattr(dataset, "file_meta", Dataset()).get("TransferSyntaxUID"))
    # a registered name only: an unregistered UID is a value from the file
    return str(UID_dictionary[syntax][0]) if syntax in UID_dictionary else "(unregistered or missing)"


def _pixel_shape(dataset: Dataset) -> tuple[int, ...]:
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptFile("DICOM image lacks Rows/Columns") from exc
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    return (frames, rows, columns, samples)


def _check_pixel_data_length(dataset: Dataset, shape: tuple[int, ...]) -> None:
    if "PixelData" not in dataset or syntax_is(dataset, "is_compressed"):
        return
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    expected = int(np.prod(shape)) * bits // 8
    actual = len(dataset.PixelData)
    if actual < expected:
        raise TruncatedFile(f"pixel data holds {actual} bytes; Rows x Columns x frames needs {expected}")


def orientation_codes(direction_cosines: Any) -> str | None:
    """Axis letters (e.g. 'LP' for an axial slice) from ImageOrientationPatient."""
    try:
        values = [float(v) for v in direction_cosines]
    except (TypeError, ValueError):
        return None
    if len(values) != 6:
        return None
    letters = []
    for vector in (values[:3], values[3:]):
        axis = int(np.argmax(np.abs(vector)))
        letters.append(_LPS_LETTERS[axis][1 if vector[axis] > 0 else 0])
    return "".join(letters)


def _spacing(dataset: Dataset) -> tuple[float, float] | None:
    """Row and column spacing in mm. ImagerPixelSpacing is at the detector; correct for magnification."""
    spacing = dataset.get("PixelSpacing")
    if spacing is None:
        spacing = dataset.get("ImagerPixelSpacing")
        magnification = _float_or_none(dataset.get("EstimatedRadiographicMagnificationFactor"))
        if spacing is not None and magnification:
            spacing = [float(v) / magnification for v in spacing]
    try:
        return (float(spacing[0]), float(spacing[1])) if spacing is not None and len(spacing) == 2 else None
    except (TypeError, ValueError):
        return None


def safe_metadata(dataset: Dataset) -> SafeMetadata:
    """Planner-safe fields. Call only on a de-identified dataset."""
    return SafeMetadata(
        modality=Modality.parse(_str_or_none(dataset.get("Modality"))),
        body_part=_str_or_none(dataset.get("BodyPartExamined")),
        view_position=_str_or_none(dataset.get("ViewPosition")),
        patient_sex=_str_or_none(dataset.get("PatientSex")),
        patient_age=_str_or_none(dataset.get("PatientAge")),
        photometric_interpretation=_str_or_none(dataset.get("PhotometricInterpretation")),
        manufacturer=_str_or_none(dataset.get("Manufacturer")),
        manufacturer_model=_str_or_none(dataset.get("ManufacturerModelName")),
        kvp=_float_or_none(dataset.get("KVP")),
        exposure_mas=_float_or_none(dataset.get("Exposure")),
        slice_thickness_mm=_float_or_none(dataset.get("SliceThickness")),
        rows=int(dataset.Rows) if "Rows" in dataset else None,
        columns=int(dataset.Columns) if "Columns" in dataset else None,
        number_of_frames=int(dataset.get("NumberOfFrames", 1) or 1),
        bits_stored=int(dataset.BitsStored) if "BitsStored" in dataset else None,
        study_date_shifted=_str_or_none(dataset.get("StudyDate")),
        study_uid=_str_or_none(dataset.get("StudyInstanceUID")),
        series_uid=_str_or_none(dataset.get("SeriesInstanceUID")),
        instance_uid=_str_or_none(dataset.get("SOPInstanceUID")),
    )


def _decode_pixels(dataset: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    try:
        raw = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise UnsupportedFormat(f"no installed decoder handles transfer syntax {_syntax_name(dataset)}") from exc
    except (ValueError, EOFError) as exc:
        raise TruncatedFile("pixel data could not be decoded in full") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. AttributeError for a file meta without a transfer syntax
        raise CorruptFile(f"pixel data could not be decoded ({type(exc).__name__})") from None
    try:
        pixels = np.asarray(apply_modality_lut(raw, dataset), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - rescale or LUT attributes of the wrong type or shape
        raise CorruptFile(f"the modality rescale could not be applied ({type(exc).__name__})") from None
    if int(dataset.get("SamplesPerPixel", 1) or 1) > 1:
        pixels = pixels.mean(axis=-1, dtype=np.float32)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        # MONOCHROME1 shows low values bright; invert so that brighter is always higher.
        pixels = (float(pixels.max()) + float(pixels.min())) - pixels
    return pixels


def load_dicom(data: bytes, sha256: str, limits: ImageLimits, deidentifier: Deidentifier) -> ImageRecord:
    dataset = _read_dataset(data)
    # Raw element headers only (no values): must run before deidentify() converts them all.
    # Deflated files are parsed from an inflated copy, so their offsets exceed the file size.
    if not syntax_is(dataset, "is_deflated"):
        _check_declared_lengths(dataset, len(data))
    convert_all(dataset)
    report = deidentifier.deidentify(dataset)  # before anything else reads the dataset
    if "PixelData" not in dataset:
        raise UnsupportedFormat("DICOM file holds no image (no PixelData)")
    shape = _pixel_shape(dataset)
    check_pixel_count(shape, limits)
    _check_pixel_data_length(dataset, shape)
    metadata = safe_metadata(dataset)
    pixels = _decode_pixels(dataset)

    window = None
    center, width = _float_or_none(dataset.get("WindowCenter")), _float_or_none(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        window = (center, width)
        if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            window = (float(pixels.max()) + float(pixels.min()) - center, width)
    spacing = _spacing(dataset)
    orientation = orientation_codes(dataset.get("ImageOrientationPatient")) or metadata.view_position
    return ImageRecord(
        pixels=pixels,
        modality=metadata.modality,
        source_format="dicom",
        source_sha256=sha256,
        spacing_mm=spacing,
        orientation=orientation,
        window=window,
        metadata=metadata,
        deid=report,
    )
