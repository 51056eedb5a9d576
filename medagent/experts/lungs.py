"""Lung localizer: the pretrained HOG/LBP/Haar detectors of the lungs-finder package."""

from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from medagent.cards import ModelCard
from medagent.errors import MissingDependency, ToolFailure
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import BoundingBox, ExpertResult, Provenance

_WORKING_SIZE = 512  # the detectors find both lungs reliably on 512-pixel radiographs
_finder_lock = threading.Lock()  # lungs-finder mutates one module-level HOG descriptor

Method = Literal["hog", "lbp", "haar", "mirrored"]


class LungBox(BaseModel):
    side: Literal["right", "left"] = Field(description="patient side; the right lung is on the image's left in a PA view")
    box: BoundingBox
    method: Method


class LungLocalization(ExpertResult):
    lungs: list[LungBox]
    image_width: int
    image_height: int
    overlay_id: str | None = None

    def summary_text(self) -> str:
        parts = [f"{lung.side} lung at x {lung.box.x0}-{lung.box.x1}, y {lung.box.y0}-{lung.box.y1}"
                 + (f" ({lung.box.width_mm:.0f} x {lung.box.height_mm:.0f} mm)" if lung.box.width_mm else "")
                 for lung in self.lungs]
        return f"Lungs found: {'; '.join(parts)} (image {self.image_width} x {self.image_height} pixels)."


def _finder() -> Any:
    try:
        import lungs_finder
    except ImportError as exc:
        raise MissingDependency("the lung localizer needs the 'experts' extra (lungs-finder, opencv)") from exc
    return lungs_finder


def _largest(rectangles: Any) -> tuple[int, int, int, int] | None:
    return None if rectangles is None else tuple(int(v) for v in rectangles)  # type: ignore[return-value]


class LungLocalizer(Expert[ImageRecord, LungLocalization]):
    cpu_only = True
    name = "lung_localizer"
    batchable = False
    card = ModelCard(
        summary="Finds the right and left lung fields on a frontal chest X-ray and returns their bounding boxes.",
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        performance="Classical detectors (HOG+SVM, LBP and Haar cascades) from lungs-finder 1.0.0; no published accuracy.",
        limitations=[
            "frontal views only",
            "boxes, not outlines",
            "a lung not found is mirrored from the other across the spine (method 'mirrored')",
        ],
        references=["https://github.com/dirtmaxim/lungs-finder"],
    )

    @property
    def cache_key(self) -> str:
        return self.name

    def load(self, device: str) -> LoadedModel:
        module = _finder()
        provenance = Provenance(
            expert=self.name, model_id="lungs-finder/1.0.0 hog+lbp+haar", device="cpu",
            library_versions={"lungs-finder": "1.0.0"},
        )
        return LoadedModel(model=module, provenance=provenance, size_bytes=0)

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[LungLocalization | BaseException]:
        results: list[LungLocalization | BaseException] = []
        for record in items:
            try:
                results.append(self._locate(loaded, record))
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results.append(exc)
        return results

    def _detect(self, finder: Any, image: np.ndarray) -> dict[str, tuple[tuple[int, int, int, int], Method]]:
        found: dict[str, tuple[tuple[int, int, int, int], Method]] = {}
        with _finder_lock:
            right, left = _largest(finder.find_right_lung_hog(image)), _largest(finder.find_left_lung_hog(image))
            if right and left and abs(right[0] - left[0]) < min(right[2], left[2]):
                right, left = None, None  # overlapping HOG hits: both are the same lung; fall back
            for side, hit in (("right", right), ("left", left)):
                if hit:
                    found[side] = (hit, "hog")
            for method in ("lbp", "haar"):
                for side in ("right", "left"):
                    if side not in found:
                        hit = _largest(getattr(finder, f"find_{side}_lung_{method}")(image))
                        if hit:
                            found[side] = (hit, method)
        if len(found) == 1:  # mirror the lung found across the spine, as lungs-finder does
            (side, ((x, y, w, h), _)), = found.items()
            spine = w / 5
            mirrored_x = int(x + w + spine) if side == "right" else int(x - w - spine)
            found["left" if side == "right" else "right"] = ((mirrored_x, y, w, h), "mirrored")
        return found

    def _locate(self, loaded: LoadedModel, record: ImageRecord) -> LungLocalization:
        import cv2

        self.card.check_image(record, self.name)
        display = record.as_2d()
        height, width = display.shape
        scale = _WORKING_SIZE / max(height, width)
        working = cv2.resize((display * 255).astype(np.uint8), (round(width * scale), round(height * scale)),
                             interpolation=cv2.INTER_AREA)
        found = self._detect(loaded.model, working)
        if not found:
            raise ToolFailure("no lung field was found; the image may not be a frontal chest X-ray")
        lungs = []
        for side in ("right", "left"):
            (x, y, w, h), method = found[side]
            x0, y0 = max(0, int(x / scale)), max(0, int(y / scale))
            x1, y1 = min(width, int((x + w) / scale)), min(height, int((y + h) / scale))
            box = BoundingBox.from_pixels(x0, y0, x1, y1, record.spacing_mm)
            lungs.append(LungBox(side=side, box=box, method=method))
        return LungLocalization(provenance=loaded.provenance, lungs=lungs, image_width=width, image_height=height)
