"""Segmentation results and the measurements taken from masks (areas, boxes, cardiothoracic ratio).

Every mask is a boolean array in the INPUT image's pixel grid, so the image's own pixel
spacing converts pixel counts to millimetres. Without a known spacing only pixels are reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from medagent.imaging.record import ImageRecord
from medagent.runtime.results import BoundingBox, ExpertResult, Provenance

HEART = "Heart"
RIGHT_LUNG = "Right Lung"  # patient's right: on the image's left in a PA/AP frontal view
LEFT_LUNG = "Left Lung"

CTR_METHOD = (
    "row-wise widths: heart width = the widest single row of the heart mask; thoracic width = the widest row "
    "between the outer border of the right lung and the outer border of the left lung (rows where both lungs are "
    "present). The lungs' outer borders approximate the inner rib margins, so this ratio can run slightly above one "
    "read on the ribs; the clinical cut-off of 0.5 applies to PA views only (AP views magnify the heart)."
)


def planar_spacing(record: ImageRecord) -> tuple[float, float] | None:
    """(row_mm, col_mm) of a 2D image, or None when the spacing is unknown or not that of a plane."""
    spacing = record.spacing_mm
    if spacing is None or len(spacing) != 2 or record.ndim != 2:
        return None
    row_mm, col_mm = float(spacing[0]), float(spacing[1])
    return (row_mm, col_mm) if row_mm > 0 and col_mm > 0 else None


class StructureMeasurement(BaseModel):
    label: str
    present: bool = Field(description="False when the mask is empty")
    area_px: int
    area_mm2: float | None = Field(default=None, description="None when the pixel spacing is unknown")
    area_fraction: float = Field(description="share of the image the structure covers")
    centroid: tuple[float, float] | None = Field(default=None, description="(row, col) in input pixels")
    box: BoundingBox | None = None


class CardiothoracicRatio(BaseModel):
    ratio: float
    heart_width_px: int
    thoracic_width_px: int
    heart_width_mm: float | None = None
    thoracic_width_mm: float | None = None
    heart_row: int = Field(description="input row where the heart is widest")
    thoracic_row: int = Field(description="input row where the thorax is widest")
    method: str = CTR_METHOD


def _row_widths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: leftmost column, rightmost column, and whether the row has any pixel."""
    has = np.asarray(mask.any(axis=1))
    left = np.where(has, mask.argmax(axis=1), -1)
    right = np.where(has, mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1), -1)
    return left, right, has


def cardiothoracic_ratio(heart_mask: np.ndarray, lung_masks: Iterable[np.ndarray],
                         col_mm: float | None = None) -> CardiothoracicRatio | None:
    """Heart width over thoracic width, both the widest single row (see ``CTR_METHOD``).

    ``lung_masks``: the two lung masks (any order). ``col_mm``: horizontal pixel spacing; None gives pixels only.
    None when the heart or either lung is empty, or no row holds both lungs.
    """
    heart = np.asarray(heart_mask, dtype=bool)
    lungs = [np.asarray(mask, dtype=bool) for mask in lung_masks]
    if len(lungs) != 2 or not heart.any() or not all(lung.any() for lung in lungs):
        return None
    h_left, h_right, h_has = _row_widths(heart)
    heart_widths = np.where(h_has, h_right - h_left + 1, 0)
    (a_left, a_right, a_has), (b_left, b_right, b_has) = (_row_widths(lung) for lung in lungs)
    both = a_has & b_has
    if not both.any():
        return None
    # the outer borders: the leftmost and rightmost lung pixel of the row, whichever lung holds them
    thorax_widths = np.where(both, np.maximum(a_right, b_right) - np.minimum(a_left, b_left) + 1, 0)
    heart_row, thorax_row = int(heart_widths.argmax()), int(thorax_widths.argmax())
    heart_px, thorax_px = int(heart_widths[heart_row]), int(thorax_widths[thorax_row])
    return CardiothoracicRatio(
        ratio=round(heart_px / thorax_px, 3),
        heart_width_px=heart_px,
        thoracic_width_px=thorax_px,
        heart_width_mm=None if col_mm is None else round(heart_px * col_mm, 1),
        thoracic_width_mm=None if col_mm is None else round(thorax_px * col_mm, 1),
        heart_row=heart_row,
        thoracic_row=thorax_row,
    )


def measure_structure(label: str, mask: np.ndarray, spacing: tuple[float, float] | None) -> StructureMeasurement:
    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if area == 0:
        return StructureMeasurement(label=label, present=False, area_px=0, area_mm2=None if spacing is None else 0.0,
                                    area_fraction=0.0)
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    row_mm, col_mm = spacing if spacing is not None else (None, None)
    box = BoundingBox(
        x0=x0, y0=y0, x1=x1, y1=y1,
        width_mm=None if col_mm is None else round((x1 - x0) * col_mm, 2),
        height_mm=None if row_mm is None else round((y1 - y0) * row_mm, 2),
    )
    return StructureMeasurement(
        label=label,
        present=True,
        area_px=area,
        area_mm2=None if spacing is None else round(area * spacing[0] * spacing[1], 2),
        area_fraction=round(area / mask.size, 4),
        centroid=(round(float(rows.mean()), 1), round(float(cols.mean()), 1)),
        box=box,
    )


class Segmentation(ExpertResult):
    """Per-structure measurements; the masks themselves travel beside the result (never serialised)."""

    segmenter: str
    structures: list[StructureMeasurement]
    image_height: int
    image_width: int
    spacing_known: bool
    pixel_spacing_mm: tuple[float, float] | None = Field(default=None, description="(row, col) of the input image")
    model_resolution: int | None = Field(default=None, description="side of the square the model worked on")
    cardiothoracic_ratio: CardiothoracicRatio | None = None
    mask_id: str | None = Field(default=None, description="NPZ artifact: one boolean array per label, input grid")
    overlay_id: str | None = None
    _masks: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_masks(cls, masks: Mapping[str, np.ndarray], record: ImageRecord, provenance: Provenance,
                   segmenter: str, **fields: Any) -> Segmentation:
        """Measure ``masks`` (input grid) with the record's real spacing; add the CTR when heart and lungs exist."""
        spacing = planar_spacing(record)
        height, width = record.as_2d().shape
        cleaned = {label: np.asarray(mask, dtype=bool) for label, mask in masks.items()}
        for label, mask in cleaned.items():
            if mask.shape != (height, width):
                raise ValueError(f"mask {label!r} has shape {mask.shape}, the image is {(height, width)}")
        ratio = None
        if {HEART, RIGHT_LUNG, LEFT_LUNG} <= cleaned.keys():
            ratio = cardiothoracic_ratio(cleaned[HEART], [cleaned[RIGHT_LUNG], cleaned[LEFT_LUNG]],
                                         None if spacing is None else spacing[1])
        result = cls(
            provenance=provenance, segmenter=segmenter,
            structures=[measure_structure(label, mask, spacing) for label, mask in cleaned.items()],
            image_height=height, image_width=width, spacing_known=spacing is not None, pixel_spacing_mm=spacing,
            cardiothoracic_ratio=ratio, **fields,
        )
        result._masks = cleaned
        return result

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return dict(self._masks)

    def labels(self) -> list[str]:
        return [structure.label for structure in self.structures]

    def structure(self, label: str) -> StructureMeasurement:
        return next(s for s in self.structures if s.label == label)

    def restricted_to(self, labels: list[str]) -> Segmentation:
        """Only ``labels`` (masks included); the CTR stays only when heart and both lungs are kept."""
        keep = set(labels)
        update: dict[str, Any] = {"structures": [s for s in self.structures if s.label in keep]}
        if not {HEART, RIGHT_LUNG, LEFT_LUNG} <= keep:
            update["cardiothoracic_ratio"] = None
        copy = self.model_copy(update=update)
        copy._masks = {label: mask for label, mask in self._masks.items() if label in keep}
        return copy

    def summary_text(self) -> str:
        marker = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        parts = []
        for s in self.structures:
            if not s.present:
                continue
            size = f"{s.area_mm2 / 100:.1f} cm²" if s.area_mm2 is not None else f"{s.area_px} px"
            parts.append(f"{s.label} {size} ({s.area_fraction:.0%} of image)")
        missing = [s.label for s in self.structures if not s.present]
        text = f"{self.segmenter}{marker}: {'; '.join(parts) or 'no structure found'}"
        if missing:
            text += f". Not found: {', '.join(missing)}"
        if self.cardiothoracic_ratio is not None:
            ctr = self.cardiothoracic_ratio
            text += (f". Cardiothoracic ratio {ctr.ratio:.2f} (heart {ctr.heart_width_px} px / "
                     f"thorax {ctr.thoracic_width_px} px, widest rows)")
        if not self.spacing_known:
            text += ". Pixel spacing unknown: sizes in pixels only"
        return text + "."
