"""A folder of DICOM files -> one 3D :class:`ImageRecord` (one series), de-identified, under the loader's limits.

Layout of the record: ``pixels`` are (slice, row, col) float32 in modality units (rescale
slope/intercept applied, so HU for CT); ``spacing_mm`` is per pixel axis, i.e. (slice spacing,
row spacing, column spacing); ``affine`` maps (slice, row, col, 1) to RAS+ millimetres as NIfTI
does (DICOM's LPS x and y negated), so the volume can be written as NIfTI unchanged.

Slices are sorted by ImagePositionPatient projected on the slice normal (the cross product of the
ImageOrientationPatient direction cosines); without positions, by InstanceNumber. The slice spacing
comes from the positions; uneven positions (a missing slice) are refused rather than guessed.

Grouping reads only technical attributes (series UID, geometry, size) from headers before
de-identification; of that pass only the remapped series UID ever leaves this module. Every file of
the chosen series is then read in full and passed through the :class:`Deidentifier` before its
metadata or pixels are used, exactly as single files are in :mod:`medagent.imaging.dicom`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from pydantic import BaseModel

from medagent.errors import (
    CorruptFile,
    ImageInputError,
    ImageTooLarge,
    InputNotFound,
    PathOutsideWorkspace,
    UnsupportedFormat,
)
from medagent.imaging.deid import Deidentifier
from medagent.imaging.dicom import (
    _check_declared_lengths,
    _decode_pixels,
    _float_or_none,
    _read_dataset,
    _spacing,
    convert_all,
    safe_metadata,
    syntax_is,
)
from medagent.imaging.limits import ImageLimits, check_file_size, check_pixel_count, resolve_in_workspace, sniff_format
from medagent.imaging.record import DeidReport, ImageRecord, Modality

MAX_SERIES_FILES = 4096
_SPACING_TOLERANCE = 0.1  # relative deviation of one slice gap from the mean gap that still counts as even
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SeriesSummary(BaseModel):
    series_uid: str  # de-identified (remapped) UID, the one a planner may see
    modality: Modality
    images: int


@dataclass
class _Header:
    """Geometry read without pixel data. Holds no identifying values except the raw series UID (remapped later)."""

    path: Path
    series_uid: str
    modality: Modality
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: int | None
    shape: tuple[int, int]
    frames: int
    gap_hint: float | None  # SpacingBetweenSlices or SliceThickness, for series without positions


def _vector(value: object, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in cast("Iterable[Any]", value)], dtype=np.float64)  # else TypeError
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.all(np.isfinite(vector)) else None


def _read_header(path: Path) -> _Header | None:
    # pydicom parses lazily: reading the attributes below can fail as well as dcmread itself
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if "Rows" not in dataset or "Columns" not in dataset:
            return None  # DICOMDIR, structured reports and other non-image objects
        gap = dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness")
        instance = dataset.get("InstanceNumber")
        return _Header(
            path=path, series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
            modality=Modality.parse(str(dataset.get("Modality", "") or "")),
            position=_vector(dataset.get("ImagePositionPatient"), 3),
            orientation=_vector(dataset.get("ImageOrientationPatient"), 6),
            instance=int(instance) if instance not in (None, "") else None,
            shape=(int(dataset.Rows), int(dataset.Columns)), frames=int(dataset.get("NumberOfFrames", 1) or 1),
            gap_hint=float(gap) if gap not in (None, "") else None,
        )
    except Exception:  # noqa: BLE001 - pydicom raises many types; the message must not name the file
        raise CorruptFile("a DICOM file in the series folder could not be parsed") from None


def _scan(folder: Path, limits: ImageLimits, workspace: Path | None, max_files: int) -> list[_Header]:
    if "dicom" not in limits.allowed_formats:
        raise UnsupportedFormat("dicom input is not allowed here", allowed=sorted(limits.allowed_formats))
    root = (workspace / folder if workspace is not None and not folder.is_absolute() else folder).resolve()
    if workspace is not None and not root.is_relative_to(workspace.resolve()):
        raise PathOutsideWorkspace("the folder resolves outside the configured workspace")
    if not root.is_dir():
        raise InputNotFound("no readable folder at the given path")
    candidates = [entry for entry in sorted(root.iterdir()) if entry.is_file() and not entry.name.startswith(".")]
    if len(candidates) > max_files:
        raise ImageTooLarge(f"the folder holds {len(candidates)} files; the limit is {max_files}", limit=max_files)
    headers = []
    for entry in candidates:
        path = resolve_in_workspace(entry, workspace)  # refuses links that lead outside the workspace
        try:
            if sniff_format(path, limits) != "dicom":
                continue
        except UnsupportedFormat:
            continue  # notes, checksums, empty files and other non-DICOM files beside the series
        check_file_size(path, limits)
        header = _read_header(path)
        if header is not None:
            headers.append(header)
    if not headers:
        raise InputNotFound("the folder holds no DICOM image")
    return headers


def list_dicom_series(folder: Path, deidentifier: Deidentifier, limits: ImageLimits | None = None,
                      workspace: Path | None = None) -> list[SeriesSummary]:
    """The series in a folder, largest first, by de-identified UID."""
    groups: dict[str, list[_Header]] = {}
    for header in _scan(Path(folder), limits or ImageLimits(), workspace, MAX_SERIES_FILES):
        groups.setdefault(header.series_uid, []).append(header)
    summaries = [SeriesSummary(series_uid=deidentifier.remap_uid(uid), modality=members[0].modality,
                               images=len(members)) for uid, members in groups.items()]
    return sorted(summaries, key=lambda s: (-s.images, s.series_uid))


def _order_and_geometry(headers: list[_Header]) -> tuple[list[_Header], np.ndarray | None, float | None]:
    """Slices in order, the LPS step vector between consecutive slices (None when unknown), and the slice gap."""
    first = headers[0].orientation
    same_plane = first is not None and all(
        h.orientation is not None and np.allclose(h.orientation, first, atol=1e-4) for h in headers)
    if not same_plane and all(h.orientation is not None for h in headers):
        raise ImageInputError("the images of the series lie in different planes (a localizer among them?)")
    normal = np.cross(first[:3], first[3:]) if same_plane and first is not None else None
    if normal is not None and all(h.position is not None for h in headers):
        projected = [float(np.dot(h.position, normal)) for h in headers]  # type: ignore[arg-type]
        order = np.argsort(projected, kind="stable")
        ordered = [headers[i] for i in order]
        if len(ordered) == 1:
            gap = ordered[0].gap_hint
            return ordered, None if gap is None else normal * gap, gap
        gaps = np.diff(np.sort(projected))
        if np.min(gaps) <= 1e-3:
            raise CorruptFile("two images of the series share one slice position")
        gap = float(np.mean(gaps))
        if float(np.max(np.abs(gaps - gap))) > _SPACING_TOLERANCE * gap:
            raise ImageInputError("slice positions are unevenly spaced (is a slice missing?)")
        step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
        return ordered, step, gap  # the step keeps a gantry tilt that the normal alone would lose
    if any(h.instance is None for h in headers):
        raise CorruptFile("the series has neither ImagePositionPatient nor InstanceNumber on every image")
    ordered = sorted(headers, key=lambda h: h.instance or 0)
    gap = ordered[0].gap_hint
    return ordered, None if normal is None or gap is None else normal * gap, gap


def _merge_reports(reports: list[DeidReport]) -> DeidReport:
    merged = reports[0].model_copy(deep=True)
    merged.private_tags_removed = sum(r.private_tags_removed for r in reports)
    merged.warnings = sorted({w for r in reports for w in r.warnings})
    flags = [r.burned_in_annotation for r in reports if r.burned_in_annotation is not None]
    merged.burned_in_annotation = any(flags) if flags else None
    return merged


def load_dicom_series(folder: Path, deidentifier: Deidentifier, limits: ImageLimits | None = None, *,
                      series_uid: str | None = None, workspace: Path | None = None,
                      max_files: int = MAX_SERIES_FILES) -> ImageRecord:
    """One series of ``folder`` as a 3D record. ``series_uid``: the de-identified UID (see
    :func:`list_dicom_series`); default: the series with the most images."""
    limits = limits or ImageLimits()
    groups: dict[str, list[_Header]] = {}
    for header in _scan(Path(folder), limits, workspace, max_files):
        groups.setdefault(deidentifier.remap_uid(header.series_uid), []).append(header)
    if series_uid is None:
        series_uid = min(groups, key=lambda uid: (-len(groups[uid]), uid))
    elif series_uid not in groups:
        raise InputNotFound(f"no series {series_uid!r} in the folder; present: {', '.join(sorted(groups))}")
    headers = groups[series_uid]
    if any(h.frames != 1 for h in headers):
        raise UnsupportedFormat("multi-frame images inside a series folder are not supported; load them one by one")
    if len({h.shape for h in headers}) != 1:
        raise CorruptFile("the images of one series differ in Rows/Columns")
    ordered, step, gap = _order_and_geometry(headers)
    rows, columns = ordered[0].shape
    check_pixel_count((len(ordered), rows, columns), limits)

    volume = np.empty((len(ordered), rows, columns), dtype=np.float32)
    digests, reports, middle = [], [], None
    for index, header in enumerate(ordered):
        data = header.path.read_bytes()
        dataset = _read_dataset(data)
        if not syntax_is(dataset, "is_deflated"):
            _check_declared_lengths(dataset, len(data))
        convert_all(dataset)
        reports.append(deidentifier.deidentify(dataset))  # before anything else reads the dataset
        if "PixelData" not in dataset:
            raise UnsupportedFormat("a DICOM file of the series holds no image (no PixelData)")
        pixels = _decode_pixels(dataset)
        if pixels.shape != (rows, columns):
            raise CorruptFile("decoded slice does not match the declared Rows/Columns")
        volume[index] = pixels
        digests.append(hashlib.sha256(data).hexdigest())
        if index == len(ordered) // 2:
            middle = dataset
    assert middle is not None
    in_plane = _spacing(middle)
    spacing = (gap, in_plane[0], in_plane[1]) if gap and in_plane else None
    orientation, affine = None, None
    first = ordered[0]
    if step is not None and in_plane and first.orientation is not None and first.position is not None:
        lps = np.eye(4)
        lps[:3, 0] = step
        lps[:3, 1] = first.orientation[3:] * in_plane[0]  # row index runs along the column direction cosine
        lps[:3, 2] = first.orientation[:3] * in_plane[1]
        lps[:3, 3] = first.position
        ras = _LPS_TO_RAS @ lps
        affine = ras.tolist()
        import nibabel as nib

        orientation = "".join(nib.aff2axcodes(ras))
    center, width = _float_or_none(middle.get("WindowCenter")), _float_or_none(middle.get("WindowWidth"))
    window = (center, width) if center is not None and width is not None and width > 0 else None
    metadata = safe_metadata(middle).model_copy(update={"number_of_frames": len(ordered)})
    return ImageRecord(
        pixels=volume, modality=metadata.modality, source_format="dicom",
        source_sha256=hashlib.sha256("".join(digests).encode()).hexdigest(),
        spacing_mm=spacing, orientation=orientation, affine=affine, window=window,
        metadata=metadata, deid=_merge_reports(reports),
    )
