"""The typed image record every expert consumes."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer


class Modality(StrEnum):
    """DICOM modality codes medagent routes on (PS3.3 C.7.3.1.1.1), plus UNKNOWN."""

    CR = "CR"  # computed radiography
    DX = "DX"  # digital radiography
    CT = "CT"
    MR = "MR"
    US = "US"
    PT = "PT"
    NM = "NM"
    MG = "MG"
    XA = "XA"
    OT = "OT"  # other
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, value: str | None) -> Modality:
        if not value:
            return cls.UNKNOWN
        try:
            return cls(value.strip().upper())
        except ValueError:
            return cls.OT

    @property
    def is_projection_radiograph(self) -> bool:
        return self in (Modality.CR, Modality.DX)


class DeidAction(BaseModel):
    """One thing the de-identifier did. Holds the tag keyword, never the value."""

    keyword: str
    action: str  # removed | emptied | replaced | shifted | remapped


class DeidReport(BaseModel):
    profile: str = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (subset)"
    options: list[str] = Field(default_factory=list)
    actions: list[DeidAction] = Field(default_factory=list)
    private_tags_removed: int = 0
    burned_in_annotation: bool | None = None
    warnings: list[str] = Field(default_factory=list)


class SafeMetadata(BaseModel):
    """Planner-safe acquisition metadata. Built only from a de-identified dataset."""

    model_config = ConfigDict(extra="forbid")

    modality: Modality = Modality.UNKNOWN
    body_part: str | None = None
    view_position: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    photometric_interpretation: str | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    kvp: float | None = None
    exposure_mas: float | None = None
    slice_thickness_mm: float | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    bits_stored: int | None = None
    study_date_shifted: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None


class ImageRecord(BaseModel):
    """Pixels plus what is known about them.

    ``pixels`` hold modality units (HU for CT after rescale, raw intensities otherwise)
    as float32; shape is (rows, cols) for 2D, (x, y, z[, t]) for NIfTI volumes, or
    (frames, rows, cols) for multi-frame DICOM. ``display()`` gives a [0, 1] view.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    pixels: np.ndarray
    modality: Modality
    source_format: str  # png | jpeg | dicom | nifti
    source_sha256: str
    spacing_mm: tuple[float, ...] | None = None  # per pixel axis, None when unknown
    orientation: str | None = None  # e.g. "RAS" axis codes for NIfTI, view position for CXR
    affine: list[list[float]] | None = None
    window: tuple[float, float] | None = None  # (center, width) used by display()
    metadata: SafeMetadata = Field(default_factory=SafeMetadata)
    deid: DeidReport | None = None
    modality_declared_by_user: bool = False
    # recognised from the pixels (medagent.experts.cxr_detect), never set when the user declared one
    modality_detected: bool = False

    @field_serializer("pixels")
    def _summarise_pixels(self, pixels: np.ndarray) -> dict[str, Any]:
        return {"shape": list(pixels.shape), "dtype": str(pixels.dtype)}

    @property
    def ndim(self) -> int:
        return int(self.pixels.ndim)

    @property
    def is_constant(self) -> bool:
        return bool(self.pixels.size == 0 or np.ptp(self.pixels) == 0)

    def display(self) -> np.ndarray:
        """Window (or min-max) the pixels into float32 [0, 1]. Constant images map to zeros."""
        pixels = self.pixels.astype(np.float32, copy=False)
        if self.window is not None:
            center, width = self.window
            low, high = center - width / 2.0, center + width / 2.0
        else:
            low, high = float(np.min(pixels)), float(np.max(pixels))
        if not np.isfinite(low) or not np.isfinite(high) or high <= low:
            return np.zeros_like(pixels, dtype=np.float32)
        return np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)

    def as_2d(self) -> np.ndarray:
        """The 2D display image (middle slice/frame for volumes) as float32 [0, 1]."""
        view = self.display()
        if view.ndim == 2:
            return view
        if self.source_format == "nifti":
            while view.ndim > 3:
                view = view[..., 0]
            return np.ascontiguousarray(np.rot90(view[:, :, view.shape[2] // 2]))
        return view[view.shape[0] // 2]

    @property
    def modality_source(self) -> str:
        """Where ``modality`` came from: declared (by the user), detected (from the pixels), file (its own
        metadata, e.g. the DICOM tag) or unknown."""
        if self.modality_declared_by_user:
            return "declared"
        if self.modality_detected:
            return "detected"
        return "unknown" if self.modality is Modality.UNKNOWN else "file"

    def summary(self) -> dict[str, Any]:
        """A compact planner-safe description."""
        return {
            "modality": self.modality.value,
            "modality_source": self.modality_source,
            "format": self.source_format,
            "shape": list(self.pixels.shape),
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "orientation": self.orientation,
            "body_part": self.metadata.body_part,
            "view_position": self.metadata.view_position,
        }
