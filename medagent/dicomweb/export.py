"""Results back to the PACS: segmentation masks as DICOM SEG, findings as a DICOM SR (TID 1500 Measurement
Report), built with highdicom and stored by STOW-RS.

Both reference the source instances by the UIDs the PACS knows them by (kept in memory by the pull: see
:class:`~medagent.dicomweb.pull.SourceImage`) and carry no patient identity: their Patient and Study modules come
from the de-identified source headers (pseudonymous patient id, name replaced, birth date and accession number
emptied, dates shifted), and the de-identification is recorded in them (``PatientIdentityRemoved``,
``DeidentificationMethod`` and its code sequence, with the Retain UIDs option for the kept references).

Findings are what the tools measured, never the planner's free text: per segmented structure its area (mm², when
the pixel spacing is known) referencing its SEG segment; the cardiothoracic ratio; an image-quality verdict.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

import medagent
from medagent.dicomweb.client import DicomwebClient, DicomwebLimits
from medagent.dicomweb.pull import PacsPull, SourceImage
from medagent.dicomweb.redact import guard_loggers
from medagent.errors import CorruptFile, PreconditionFailed
from medagent.imaging.deid import PROFILE_NAME
from medagent.tools.artifacts import ArtifactStore

SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9901, 9902
MEDAGENT_SCHEME = "99MEDAGENT"  # a private coding scheme (PS3.16 8.2) for concepts no standard code names
DEID_METHOD = f"{PROFILE_NAME}; source study, series and instance UIDs retained for reference"
DEID_CODES = (("113100", "Basic Application Confidentiality Profile"),
              ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
              ("113108", "Retain Patient Characteristics Option"),
              ("113110", "Retain UIDs Option"))


@dataclass
class ImageResults:
    """What the tools found on one pulled image: masks by label, measurements, and the expert that made them."""

    source: SourceImage
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    areas_mm2: dict[str, float | None] = field(default_factory=dict)
    cardiothoracic_ratio: float | None = None
    usable: bool | None = None
    algorithm: str = "medagent"


def _load_masks(store: ArtifactStore, mask_id: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(store.read_bytes(mask_id)), allow_pickle=False) as arrays:
            return {str(label): np.asarray(arrays[label], dtype=bool) for label in arrays.files}
    except (OSError, ValueError, KeyError):
        raise CorruptFile("the mask artifact is not an NPZ of boolean arrays") from None


def collect_results(pull: PacsPull, tool_calls: Sequence[Mapping[str, Any]], store: ArtifactStore
                    ) -> list[ImageResults]:
    """The results of successful tool calls on pulled images (calls on other images are not the PACS's)."""
    results: dict[str, ImageResults] = {}
    for call in tool_calls:
        output, image_id = call.get("output"), (call.get("arguments") or {}).get("image_id")
        if not call.get("ok") or not isinstance(output, dict) or image_id not in pull.image_ids:
            continue
        entry = results.setdefault(image_id, ImageResults(source=pull.source(image_id)))
        provenance = output.get("provenance") or {}
        if isinstance(output.get("mask_id"), str):
            entry.masks.update(_load_masks(store, output["mask_id"]))
            entry.algorithm = str(provenance.get("model_id") or provenance.get("expert") or call.get("tool"))[:64]
            for structure in output.get("structures") or []:
                if isinstance(structure, dict) and structure.get("present"):
                    entry.areas_mm2[str(structure["label"])] = structure.get("area_mm2")
        ratio = output.get("cardiothoracic_ratio")
        if isinstance(ratio, dict) and isinstance(ratio.get("ratio"), int | float):
            entry.cardiothoracic_ratio = float(ratio["ratio"])
        if isinstance(output.get("usable"), bool):
            entry.usable = output["usable"]
    return list(results.values())


def record_deidentification(dataset: Dataset) -> None:
    """Mark ``dataset`` as carrying no patient identity and say how (PS3.15 E.1 and its options)."""
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = DEID_METHOD[:64]
    codes = []
    for value, meaning in DEID_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = codes
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"


def _mask_frames(source: SourceImage, mask: np.ndarray) -> np.ndarray:
    rows, columns = int(source.headers[0].Rows), int(source.headers[0].Columns)
    frames = mask[np.newaxis] if mask.ndim == 2 else mask
    if frames.shape != (len(source.headers), rows, columns):
        raise PreconditionFailed("a mask does not lie on the source instances' pixel grid; it cannot become a SEG")
    return frames


def _property_type(label: str) -> Any:
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    lowered = label.lower()
    for word, code in (("lung", codes.SCT.Lung), ("heart", codes.SCT.Heart)):
        if word in lowered:
            return code
    return CodedConcept("".join(ch for ch in label.upper() if ch.isalnum())[:16] or "STRUCTURE", MEDAGENT_SCHEME,
                        label[:64])


def segmentation_object(results: ImageResults) -> Dataset | None:
    """A DICOM SEG (binary, one segment per non-empty mask) on the source instances; None without masks."""
    from pydicom.sr.codedict import codes

    hd = _highdicom()
    labels = [label for label, mask in results.masks.items() if mask.any()]
    if not labels:
        return None
    source = results.source
    pixels = np.stack([_mask_frames(source, results.masks[label]) for label in labels], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(name=results.algorithm, version=medagent.__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label[:64], segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=_property_type(label), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for number, label in enumerate(labels, start=1)]
    seg = hd.seg.Segmentation(
        source_images=list(source.headers), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medagent", manufacturer_model_name="medagent", software_versions=medagent.__version__,
        device_serial_number="none", series_description="medagent segmentation")
    record_deidentification(seg)
    return seg


def _frames_of(seg: Dataset, segment_number: int) -> list[int]:
    """The SEG's frame numbers (1-based) holding ``segment_number``; the segment of a frame is named per frame, or
    once in the shared functional groups when every frame holds the same segment."""
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    frames = []
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        identification = frame.get("SegmentIdentificationSequence") or shared
        if identification and int(identification[0].ReferencedSegmentNumber) == segment_number:
            frames.append(index)
    return frames


def _highdicom() -> Any:
    """highdicom, imported on first use, its loggers (which name source SOP Instance UIDs) guarded."""
    import highdicom

    guard_loggers("highdicom")
    return highdicom


def _private(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value, MEDAGENT_SCHEME, meaning)


def report_object(results: ImageResults, seg: Dataset | None) -> Dataset:
    """A Comprehensive 3D SR holding a TID 1500 Measurement Report of ``results``, with the source instances (and
    the SEG, when there is one) as its evidence."""
    from pydicom.sr.codedict import codes

    hd = _highdicom()
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medagent", manufacturer_name="medagent", model_name=results.algorithm))
    source = results.source
    planar = len(source.headers) == 1
    groups: list[Any] = []
    for segment in seg.SegmentSequence if seg is not None else []:
        assert seg is not None
        label, number = str(segment.SegmentLabel), int(segment.SegmentNumber)
        area = results.areas_mm2.get(label)
        measurements = [hd.sr.Measurement(name=codes.SCT.Area, value=float(area), unit=codes.UCUM.SquareMillimeter)
                        ] if area is not None else None
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label[:64])
        frames = _frames_of(seg, number)
        images = [hd.sr.SourceImageForSegmentation(str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in source.headers]
        if planar:
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=_property_type(label), measurements=measurements,
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    str(seg.SOPClassUID), str(seg.SOPInstanceUID), frames[0], number, images[0])))
        else:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=_property_type(label), measurements=measurements,
                referenced_segment=hd.sr.ReferencedSegment(str(seg.SOPClassUID), str(seg.SOPInstanceUID), number,
                                                           frame_numbers=frames, source_images=images)))
    overall = []
    if results.cardiothoracic_ratio is not None:
        overall.append(hd.sr.Measurement(name=_private("CTR", "Cardiothoracic ratio"),
                                         value=results.cardiothoracic_ratio, unit=codes.UCUM.NoUnits))
    evaluations = [] if results.usable is None else [hd.sr.QualitativeEvaluation(
        name=_private("IMAGEQUALITY", "Image quality"),
        value=_private("USABLE", "Usable") if results.usable else _private("NOTUSABLE", "Not usable"))]
    if overall or evaluations:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image findings"),
            measurements=overall or None, qualitative_evaluations=evaluations or None))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups or None,
        referenced_images=None if groups else list(source.headers))
    report = hd.sr.Comprehensive3DSR(
        evidence=[*source.headers, *([seg] if seg is not None else [])], content=content,
        series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medagent", is_complete=True, series_description="medagent findings")
    record_deidentification(report)
    return report


@dataclass(frozen=True)
class PushResult:
    """SOP Instance UIDs of the objects stored, and the series each is in (new UIDs medagent generated, none of the
    source's)."""

    segmentations: list[str]
    reports: list[str]
    segmentation_series: list[str] = field(default_factory=list)
    report_series: list[str] = field(default_factory=list)


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def push_results(pull: PacsPull, tool_calls: Sequence[Mapping[str, Any]], store: ArtifactStore, *,
                       limits: DicomwebLimits | None = None, headers: Mapping[str, str] | None = None) -> PushResult:
    """Build a SEG (when there are masks) and an SR for each pulled image the tools worked on, and store them on the
    server the images came from (nothing when no tool worked on a pulled image). ``tool_calls``: an answer's tool
    trace (``Answer.tool_calls``)."""
    import asyncio

    results = await asyncio.to_thread(collect_results, pull, tool_calls, store)
    if not results:
        return PushResult(segmentations=[], reports=[])  # no tool worked on a pulled image: nothing to store
    built: list[tuple[Dataset | None, Dataset]] = []
    for entry in results:
        seg = await asyncio.to_thread(segmentation_object, entry)
        built.append((seg, await asyncio.to_thread(report_object, entry, seg)))
    segs = [seg for seg, _ in built if seg is not None]
    reports = [report for _, report in built]
    payload = await asyncio.to_thread(lambda: [_part10(item) for item in [*segs, *reports]])
    async with DicomwebClient(pull.url, limits=limits, headers=headers) as client:
        await client.store(payload)
    return PushResult(segmentations=[str(seg.SOPInstanceUID) for seg in segs],
                      reports=[str(report.SOPInstanceUID) for report in reports],
                      segmentation_series=[str(seg.SeriesInstanceUID) for seg in segs],
                      report_series=[str(report.SeriesInstanceUID) for report in reports])
