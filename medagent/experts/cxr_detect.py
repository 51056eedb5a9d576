"""Recognise frontal chest radiographs among PNG/JPEG inputs, which carry no modality of their own.

The public chest X-ray sets (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest) ship PNG/JPEG, so
without this every chest X-ray expert refused them unless the user declared ``--modality DX``. A PNG or
JPEG whose modality was not declared is marked DX (body part CHEST, ``modality_source`` ``detected``)
when both of these agree:

* classical: a frontal chest film's middle rows show two dark lung fields either side of a brighter
  mediastinum and spine, roughly symmetric; down the lung columns the lungs are darker than the diaphragm
  and abdomen below them, and the neck and shoulders above are darker than those; the border is not
  mostly empty black (a CT or MR slice sits on black air; photographs lack this layout);
* lungs-finder's detectors (HOG/LBP/Haar, the ones the lung localizer uses) find a lung on each side of
  the midline. When lungs-finder is not installed the classical test decides alone.

A declaration always wins: declared images and other formats are returned unchanged. This is a routing
aid, not a diagnostic model: a missed detection leaves the image UNKNOWN (the experts then ask for a
declaration), so the thresholds prefer missing a radiograph to claiming a photo is one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medagent.imaging.record import ImageRecord, Modality

logger = logging.getLogger(__name__)

RASTER_FORMATS = frozenset({"png", "jpeg"})
_MIN_SIDE = 256  # smaller pictures are thumbnails or icons, not radiographs to read
_ASPECT = (0.6, 1.6)  # width / height of frontal chest films (portrait and landscape cassettes)
_PROFILE_SIZE = 256
_WORKING_SIZE = 512  # lungs-finder's detectors work at this size (see experts/lungs.py)


def column_profile_looks_like_a_chest(image: np.ndarray) -> bool:
    """``image``: 2D float [0, 1]. The classical test: the layout of a frontal chest film at 256 x 256."""
    import cv2

    size = _PROFILE_SIZE
    small = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    if float(small.std()) < 0.05:  # flat or nearly constant: nothing to read
        return False
    border = np.concatenate([small[:16].ravel(), small[-16:].ravel(), small[:, :16].ravel(), small[:, -16:].ravel()])
    if float(np.mean(border < 0.04)) > 0.5:  # a cross-section on black air, or a picture with a black frame
        return False

    def band(values: np.ndarray, start: float, stop: float) -> np.ndarray:
        return values[int(size * start):int(size * stop)]

    # across the middle rows: two dark lung fields either side of the brighter mediastinum and spine
    profile = band(small, 0.3, 0.7).mean(axis=0)
    centre = float(band(profile, 0.44, 0.56).mean())
    right, left = float(band(profile, 0.18, 0.38).min()), float(band(profile, 0.62, 0.82).min())
    lungs_either_side = centre - max(right, left) > 0.06 and abs(right - left) < 0.25 and min(right, left) > 0.03
    # down the lung columns: dark lungs over the bright diaphragm and abdomen, darker neck and shoulders on top
    lung_columns = np.r_[int(size * 0.18):int(size * 0.38), int(size * 0.62):int(size * 0.82)]
    rows = small[:, lung_columns].mean(axis=1)
    lungs, below, above = float(band(rows, 0.35, 0.6).mean()), float(band(rows, 0.88, 1).mean()), float(
        band(rows, 0, 0.1).mean())
    mediastinum = float(band(small[:, int(size * 0.44):int(size * 0.56)].mean(axis=1), 0.2, 0.9).mean())
    vertical = below - lungs > 0.25 and below - above > 0.2 and mediastinum - lungs > 0.12
    return lungs_either_side and vertical


def lungs_found_on_both_sides(image: np.ndarray) -> bool | None:
    """Whether lungs-finder finds a lung left and right of the midline; None when it is not installed."""
    try:
        import cv2
        import lungs_finder
    except ImportError:
        return None
    from medagent.experts.lungs import _finder_lock

    height, width = image.shape
    scale = _WORKING_SIZE / max(height, width)
    working = cv2.resize((np.clip(image, 0, 1) * 255).astype(np.uint8),
                         (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    midline = working.shape[1] / 2
    sides: dict[str, bool] = {}
    with _finder_lock:  # lungs-finder shares one module-level HOG descriptor
        for side in ("right", "left"):
            for method in ("hog", "lbp", "haar"):
                hit: Any = getattr(lungs_finder, f"find_{side}_lung_{method}")(working)
                if hit is None:
                    continue
                x, _, w, _ = (int(v) for v in hit)
                centre = x + w / 2
                # the patient's right lung lies on the image's left in a frontal view
                if (side == "right" and centre < midline) or (side == "left" and centre > midline):
                    sides[side] = True
                    break
    return sides.get("right", False) and sides.get("left", False)


def is_frontal_chest_radiograph(record: ImageRecord) -> bool:
    """The two tests of the module docstring on a 2D PNG/JPEG record (no format or declaration checks)."""
    if record.pixels.ndim != 2:
        return False
    height, width = record.pixels.shape
    if min(height, width) < _MIN_SIDE or not _ASPECT[0] <= width / height <= _ASPECT[1]:
        return False
    image = record.as_2d()
    if not column_profile_looks_like_a_chest(image):
        return False
    found = lungs_found_on_both_sides(image)
    return found is None or found


def with_detected_modality(record: ImageRecord) -> ImageRecord:
    """``record`` marked DX / CHEST / detected when it is an undeclared PNG/JPEG frontal chest radiograph;
    otherwise ``record`` itself (declared modalities, DICOM and NIfTI are never second-guessed)."""
    if (record.source_format not in RASTER_FORMATS or record.modality_declared_by_user
            or record.modality is not Modality.UNKNOWN):
        return record
    try:
        detected = is_frontal_chest_radiograph(record)
    except Exception:  # a routing aid must never cost the user the image: it stays UNKNOWN
        logger.warning("chest radiograph detection failed; the image keeps an unknown modality", exc_info=True)
        return record
    if not detected:
        return record
    metadata = record.metadata.model_copy(update={"modality": Modality.DX, "body_part": "CHEST"})
    return record.model_copy(update={"modality": Modality.DX, "metadata": metadata, "modality_detected": True})
