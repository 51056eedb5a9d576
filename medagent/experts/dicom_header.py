"""DICOM header reader: de-identified, planner-safe acquisition metadata."""

from __future__ import annotations

from pydantic import BaseModel

from medagent.cards import ModelCard
from medagent.errors import PreconditionFailed
from medagent.imaging.record import ImageRecord, SafeMetadata
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import ExpertResult, Provenance


class DeidSummary(BaseModel):
    profile: str
    options: list[str]
    attributes_changed: int
    private_tags_removed: int
    warnings: list[str]


class DicomHeader(ExpertResult):
    metadata: SafeMetadata
    pixel_spacing_mm: list[float] | None
    orientation: str | None
    deidentification: DeidSummary


    def summary_text(self) -> str:
        meta = self.metadata
        facts = [f"{meta.modality.value} image"]
        if meta.body_part:
            facts.append(f"body part {meta.body_part}")
        if meta.view_position:
            facts.append(f"view {meta.view_position}")
        if meta.manufacturer:
            facts.append(f"scanner {meta.manufacturer} {meta.manufacturer_model or ''}".rstrip())
        if meta.kvp:
            facts.append(f"{meta.kvp:g} kVp")
        if meta.exposure_mas:
            facts.append(f"exposure {meta.exposure_mas:g} mAs")
        if meta.slice_thickness_mm:
            facts.append(f"slice thickness {meta.slice_thickness_mm:g} mm")
        if self.pixel_spacing_mm:
            facts.append(f"pixel spacing {self.pixel_spacing_mm[0]:.2f} mm")
        return "DICOM header: " + ", ".join(facts) + "."


class DicomHeaderReader(Expert[ImageRecord, DicomHeader]):
    cpu_only = True
    name = "dicom_header"
    batchable = False
    card = ModelCard(
        summary=(
            "Reads acquisition metadata of a DICOM image (modality, body part, view, pixel spacing, kVp, "
            "exposure, slice thickness) after de-identification; names, IDs and real dates never appear."
        ),
        modalities=None,
        dimensionality=[2, 3],
        source_formats=["dicom"],
        limitations=["DICOM inputs only", "dates are shifted per patient; intervals are preserved"],
    )

    @property
    def cache_key(self) -> str:
        return self.name

    def load(self, device: str) -> LoadedModel:
        return LoadedModel(model=None, provenance=Provenance(expert=self.name, model_id="medagent/dicom-header-v1"))

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[DicomHeader | BaseException]:
        return [self._read(loaded.provenance, record) for record in items]

    def _read(self, provenance: Provenance, record: ImageRecord) -> DicomHeader | BaseException:
        if record.source_format != "dicom" or record.deid is None:
            return PreconditionFailed(f"{self.name} reads DICOM files; this image came from a {record.source_format} file")
        return DicomHeader(
            provenance=provenance,
            metadata=record.metadata,
            pixel_spacing_mm=list(record.spacing_mm) if record.spacing_mm else None,
            orientation=record.orientation,
            deidentification=DeidSummary(
                profile=record.deid.profile,
                options=record.deid.options,
                attributes_changed=len(record.deid.actions),
                private_tags_removed=record.deid.private_tags_removed,
                warnings=record.deid.warnings,
            ),
        )
