"""Classical lung-field segmentation of frontal chest X-rays: thresholds and morphology, no weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from medagent.cards import ModelCard
from medagent.errors import MissingDependency
from medagent.experts.segmentation import LEFT_LUNG, RIGHT_LUNG, Segmentation
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import Provenance

_WORKING_SIZE = 256  # long side; lungs are large, and one scale keeps the morphology sizes meaningful
_MIN_LUNG_FRACTION = 0.01  # smaller dark blobs are bowel gas, trachea or noise, not a lung field
LABELS = [RIGHT_LUNG, LEFT_LUNG]


def _libraries() -> tuple[Any, Any]:
    try:
        import cv2
        from scipy import ndimage
    except ImportError as exc:
        raise MissingDependency("the lung-field segmenter needs opencv and scipy (the 'experts' extra)") from exc
    return cv2, ndimage


def _disk(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return (grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2


def _spine_column(image: np.ndarray) -> int:
    """The brightest column of the central 40 % over the mid-thorax rows: the spine and mediastinum."""
    height, width = image.shape
    band = image[height // 5: 3 * height // 5]
    profile = np.convolve(band.mean(axis=0), np.ones(9) / 9, mode="same")
    low, high = int(width * 0.3), int(width * 0.7)
    return low + int(np.argmax(profile[low:high]))


def segment_lung_fields(display: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(image-left lung, image-right lung, working size) of a [0, 1] frontal chest X-ray, in its own grid.

    Dark (air-filled) regions are found with Otsu's threshold on a contrast-normalised, smoothed image;
    dark regions touching the image border (air around the body) are discarded; the rest is cleaned
    by morphology and the largest region each side of the spine is kept.
    """
    cv2, ndimage = _libraries()
    height, width = display.shape
    scale = _WORKING_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(display.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    low, high = np.percentile(small, (1, 99))
    normalised = np.clip((small - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply((normalised * 255).astype(np.uint8))
    grey = cv2.GaussianBlur(grey, (0, 0), 2.0)
    _, dark = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    # opening first severs thin dark bridges (trachea, skin folds) that would tie a lung to the outside air
    dark = ndimage.binary_opening(dark.astype(bool), structure=_disk(2))
    labels, _ = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    dark &= ~np.isin(labels, border[border > 0])
    dark = ndimage.binary_closing(dark, structure=_disk(4), border_value=0)  # ribs cut notches into the fields
    dark = ndimage.binary_fill_holes(dark)  # vessels and nodules inside a field belong to it
    spine = _spine_column(normalised)
    # a field merged across the midline is cut at the spine, so each side keeps its own lung
    image_left, image_right = dark.copy(), dark.copy()
    image_left[:, spine:] = False
    image_right[:, :spine] = False
    return _largest(image_left, ndimage), _largest(image_right, ndimage), max(size)


def _largest(mask: np.ndarray, ndimage: Any) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    best = int(np.argmax(sizes))
    if sizes[best] < _MIN_LUNG_FRACTION * mask.size:
        return np.zeros_like(mask)
    return labels == best + 1


def _to_input_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    smooth = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return smooth >= 0.5


class LungFieldSegmenter(Expert[ImageRecord, Segmentation]):
    """Right and left lung-field masks without any learned weights (a fallback and a cross-check)."""

    cpu_only = True

    name = "lung_field_segmenter"
    batchable = False
    card = ModelCard(
        summary=(
            "Outlines the right and left lung fields on a frontal chest X-ray with classical image processing "
            "(Otsu threshold, border-connected air removal, morphology); reports areas, boxes and centroids."
        ),
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        valid_arguments={"structures": LABELS},
        performance="No validated accuracy: a heuristic with no training data; use it as a rough outline only.",
        limitations=[
            "frontal PA/AP views only; 'Right Lung' is the field on the image's left (mirrored images are mislabelled)",
            "lung tissue hidden behind the heart or the diaphragm is not included",
            "dense consolidation, large effusions or collapse are left out of the field (they are not dark)",
            "a lung touching the image edge may be discarded with the air outside the body",
            "an external area is not a lung volume; without pixel spacing, sizes are in pixels",
        ],
        references=["Otsu N. A threshold selection method from gray-level histograms. IEEE TSMC 1979;9(1):62-66"],
    )

    @property
    def cache_key(self) -> str:
        return self.name

    def load(self, device: str) -> LoadedModel:
        cv2, _ = _libraries()
        import scipy

        provenance = Provenance(
            expert=self.name, model_id="medagent/lung-fields-otsu-morphology-v1", device="cpu",
            library_versions={"opencv": cv2.__version__, "scipy": scipy.__version__},
        )
        return LoadedModel(model=None, provenance=provenance, size_bytes=0)

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[Segmentation | BaseException]:
        results: list[Segmentation | BaseException] = []
        for record in items:
            try:
                results.append(self._segment(record, loaded.provenance))
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results.append(exc)
        return results

    def _segment(self, record: ImageRecord, provenance: Provenance) -> Segmentation:
        self.card.check_image(record, self.name)
        display = record.as_2d()
        image_left, image_right, working = segment_lung_fields(display)
        # in a frontal view the patient faces the viewer: the patient's right lung is on the image's left
        masks = {RIGHT_LUNG: _to_input_grid(image_left, display.shape),
                 LEFT_LUNG: _to_input_grid(image_right, display.shape)}
        return Segmentation.from_masks(masks, record, provenance, "Classical lung-field segmentation",
                                       model_resolution=working)
