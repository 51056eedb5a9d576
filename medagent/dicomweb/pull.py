"""Pull a study (or one series) from a DICOMweb server into a session: found by QIDO-RS, retrieved by WADO-RS,
loaded and de-identified on arrival by medagent's own loader.

Each image series is retrieved into a private temporary folder (0700, files 0600, removed as soon as the series
is loaded): a CT, MR or PET series whose slices carry positions becomes one 3D image through the loader's DICOM
series path; any other instance (radiographs, multi-frame objects) is attached on its own as uploaded bytes are.
Non-image series (SEG, SR, presentation states, ...) are skipped. The session, its planner and its artifact store
see only the de-identified copies.

What a push back needs stays in memory, in the returned :class:`PacsPull`: for each attached image, the headers
of its source instances with the patient's identity removed by the same de-identifier but the PACS's own study,
series, instance and frame-of-reference UIDs kept, so that a DICOM SEG or SR can reference them. Nothing of it
is written anywhere, shown in a ``repr`` or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medagent.dicomweb.client import DicomwebClient, DicomwebLimits
from medagent.dicomweb.errors import DicomwebNotFound, DicomwebResponseInvalid, DicomwebTooLarge
from medagent.errors import CorruptFile, UnknownArtifact
from medagent.experts.cxr_detect import with_detected_modality
from medagent.files import write_private
from medagent.imaging.deid import PATIENT_NAME_REPLACEMENT, Deidentifier
from medagent.imaging.dicom import convert_all
from medagent.imaging.series import load_dicom_series
from medagent.tools.artifacts import Artifact
from medagent.tools.builtin import Toolbox

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "DOC", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE",
                                  "RTRECORD", "PLAN", "AU", "ECG", "HD", "FID", "RWV"})
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
# Type 2 attributes of the Patient and General Study modules that derived objects copy (empty when absent)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


class _AgentLike(Protocol):
    @property
    def toolbox(self) -> Toolbox: ...


class SessionLike(Protocol):
    """What a pull needs of :class:`medagent.api.Session`."""

    @property
    def agent(self) -> _AgentLike: ...

    async def image_ids(self) -> list[str]: ...

    def attach_stored(self, image_id: str) -> Artifact: ...


@dataclass(frozen=True)
class SourceImage:
    """An attached image and where it came from: ``headers`` are its source instances (slice order for a volume),
    identity removed, PACS UIDs kept (see the module docstring)."""

    image_id: str
    modality: str
    headers: tuple[Dataset, ...] = field(repr=False)

    @property
    def study_uid(self) -> str:
        return str(self.headers[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)


@dataclass
class PacsPull:
    """The images one pull attached, and (in memory only) what a push back to ``url`` needs."""

    url: str = field(repr=False)
    images: list[SourceImage] = field(default_factory=list)
    skipped_instances: int = 0

    @property
    def image_ids(self) -> list[str]:
        return [image.image_id for image in self.images]

    def source(self, image_id: str) -> SourceImage:
        for image in self.images:
            if image.image_id == image_id:
                return image
        raise UnknownArtifact("the image did not come from this DICOMweb pull")


def reference_header(dataset: Dataset, deidentifier: Deidentifier) -> Dataset:
    """A copy of an instance's header for derived objects: the patient's identity removed (names, ids, birth date,
    accession number, addresses, comments: the same profile as the images), the PACS's reference UIDs kept."""
    header = copy.deepcopy(dataset)
    kept = {keyword: header.get(keyword) for keyword in REFERENCE_UIDS if keyword in header}
    deidentifier.deidentify(header)
    reduced = Dataset()
    reduced.update(header)  # a plain dataset: no file meta, no preamble
    for keyword, value in kept.items():
        setattr(reduced, keyword, value)
    for keyword in _TYPE2:
        if keyword not in reduced:
            setattr(reduced, keyword, "")
    if str(reduced.PatientName) == PATIENT_NAME_REPLACEMENT:
        reduced.PatientName = PATIENT_NAME_REPLACEMENT + "^"  # a family name, written as PS3.5 6.2.1.2 asks
    return reduced


def _read_header(path: Path) -> Dataset:
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        convert_all(dataset)
        return dataset
    except CorruptFile:
        raise
    except Exception:  # noqa: BLE001 - pydicom raises many types, with values from the file in their messages
        raise CorruptFile("an instance from the DICOMweb server is not a readable DICOM file") from None


def _is_image(header: Dataset) -> bool:
    modality = str(header.get("Modality", "") or "").upper()
    return "Rows" in header and "Columns" in header and modality not in NON_IMAGE_MODALITIES


def _vector(header: Dataset, keyword: str, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in header.get(keyword) or []], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.all(np.isfinite(vector)) else None


def _as_volume(headers: list[Dataset]) -> bool:
    """A series the loader's series path reads as one 3D image: cross-sectional single frames with positions."""
    return len(headers) > 1 and all(
        str(h.get("Modality", "")).upper() in VOLUME_MODALITIES and int(h.get("NumberOfFrames", 1) or 1) == 1
        and _vector(h, "ImagePositionPatient", 3) is not None and _vector(h, "ImageOrientationPatient", 6) is not None
        for h in headers)


def slice_order(headers: list[Dataset]) -> list[Dataset]:
    """Headers in the order the series loader stacks their slices: by position along the slice normal."""
    orientation = _vector(headers[0], "ImageOrientationPatient", 6)
    assert orientation is not None
    normal = np.cross(orientation[:3], orientation[3:])
    keys = [float(np.dot(_vector(h, "ImagePositionPatient", 3), normal)) for h in headers]  # type: ignore[arg-type]
    return [headers[i] for i in np.argsort(keys, kind="stable")]


async def _download(client: DicomwebClient, study_uid: str, series_uid: str, folder: Path, budget: dict[str, int],
                    instance_bytes: int) -> list[Path]:
    files: list[Path] = []
    parts = client.retrieve_series(study_uid, series_uid, max_instances=budget["instances"],
                                   max_instance_bytes=instance_bytes, max_total_bytes=budget["bytes"])
    async with contextlib.aclosing(parts):
        async for data in parts:
            path = folder / f"{len(files):05d}.dcm"
            await asyncio.to_thread(write_private, path, data)
            files.append(path)
            budget["instances"] -= 1
            budget["bytes"] -= len(data)
    return files


async def _load(toolbox: Toolbox, folder: Path, files: list[Path], pull: PacsPull) -> None:
    """Load (de-identify, store) the series in ``folder`` as one volume or instance by instance; record the
    images in ``pull``."""
    deidentifier = toolbox.loader.deidentifier
    headers = await asyncio.to_thread(lambda: [_read_header(path) for path in files])
    images = [(path, header) for path, header in zip(files, headers, strict=True) if _is_image(header)]
    pull.skipped_instances += len(files) - len(images)
    if len({str(header.get("SeriesInstanceUID", "")) for _, header in images}) > 1:
        raise DicomwebResponseInvalid("a WADO-RS series answer holds instances of several series")
    if _as_volume([header for _, header in images]):
        for path, header in zip(files, headers, strict=True):
            if not _is_image(header):
                path.unlink()
        record = await asyncio.to_thread(load_dicom_series, folder, deidentifier, toolbox.loader.limits,
                                         max_files=len(images))
        artifact = await asyncio.to_thread(toolbox.store.put_image, with_detected_modality(record))
        ordered = slice_order([header for _, header in images])
        references = await asyncio.to_thread(lambda: tuple(reference_header(h, deidentifier) for h in ordered))
        pull.images.append(SourceImage(artifact.id, record.modality.value, references))
        return
    for path, header in images:
        # the same path as Session.attach_bytes: size limit, content sniffing, de-identification, the store
        artifact = await asyncio.to_thread(toolbox.attach_bytes, await asyncio.to_thread(path.read_bytes))
        summary: Mapping[str, Any] = artifact.metadata.get("summary", {})
        reference = await asyncio.to_thread(reference_header, header, deidentifier)
        pull.images.append(SourceImage(artifact.id, str(summary.get("modality", "")), (reference,)))


async def pull_study(session: SessionLike, url: str, study_uid: str, series_uid: str | None = None, *,
                     limits: DicomwebLimits | None = None, headers: Mapping[str, str] | None = None) -> PacsPull:
    """Attach the image series of a study (or only ``series_uid``) on a DICOMweb server to ``session``.

    Typed errors (:mod:`medagent.dicomweb.errors`) for an unreachable server, an unknown UID, a refusal, a
    malformed answer or one past ``limits``; the loader's own (``CorruptFile``, ``ImageTooLarge``...) for
    instances it refuses. All or nothing: the images are attached to the session once every series has loaded."""
    limits = limits or DicomwebLimits()
    await session.image_ids()  # the session's owner is checked before anything is fetched
    toolbox = session.agent.toolbox
    instance_bytes = limits.max_instance_bytes or toolbox.settings.limits.max_file_bytes
    async with DicomwebClient(url, limits=limits, headers=headers) as client:
        found = await client.search_series(study_uid, series_uid)
        series = [info for info in found if info.modality not in NON_IMAGE_MODALITIES]
        if not series:
            raise DicomwebNotFound("the study holds no image series")
        if len(series) > limits.max_series:
            raise DicomwebTooLarge(f"the study holds {len(series)} image series; the limit is {limits.max_series}",
                                   limit=limits.max_series)
        announced = sum(info.instances or 0 for info in series)
        if announced > limits.max_instances:
            raise DicomwebTooLarge(f"the study holds {announced} instances; the limit is {limits.max_instances}",
                                   limit=limits.max_instances)
        pull = PacsPull(url=client.url)
        budget = {"instances": limits.max_instances, "bytes": limits.max_total_bytes}
        for info in series:
            with tempfile.TemporaryDirectory(prefix="medagent-pacs-") as folder:  # 0700, removed with its files
                files = await _download(client, study_uid, info.uid, Path(folder), budget, instance_bytes)
                if files:
                    await _load(toolbox, Path(folder), files, pull)
    for image in pull.images:
        session.attach_stored(image.image_id)
    logger.info("pulled %d image(s) from DICOMweb", len(pull.images),
                extra={"fields": {"images": len(pull.images), "skipped_instances": pull.skipped_instances}})
    return pull
