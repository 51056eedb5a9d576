"""Prior vs current study: affine registration, a difference map, and classifier deltas per finding."""

from __future__ import annotations

import importlib.metadata
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from medagent.cards import ModelCard
from medagent.errors import MissingDependency, PreconditionFailed, ToolFailure
from medagent.experts.cxr_classifier import Classification
from medagent.imaging.record import ImageRecord
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import BoundingBox, ExpertResult, Provenance

_WORKING_SIZE = 512  # registration and differencing run on the current image scaled to this longest side

Verdict = Literal["changed", "unchanged", "indeterminate"]
FindingStatus = Literal["new", "resolved", "increased", "decreased", "unchanged"]


class ChangeThresholds(BaseModel):
    """When a difference counts as a change; every figure is reported next to its threshold."""

    pixel_difference: float = Field(default=0.15, gt=0, le=1, description="|current - registered prior| on [0, 1]")
    changed_fraction: float = Field(default=0.005, gt=0, le=1, description="share of overlapping pixels above it")
    probability_delta: float = Field(default=0.10, gt=0, le=1, description="classifier probability change")
    min_registration_correlation: float = Field(default=0.6, ge=0, le=1, description="ECC correlation after alignment")


class Registration(BaseModel):
    method: str = "OpenCV ECC affine (translation initialised by phase correlation)"
    matrix: list[list[float]] = Field(description="2x3 affine mapping current-image pixels to prior-image pixels")
    translation_px: tuple[float, float] = Field(description="(x, y) shift in current-image pixels")
    rotation_deg: float
    scale: float
    correlation_before: float
    correlation_after: float


class ImageChange(ExpertResult):
    registration: Registration
    changed_fraction: float = Field(description="share of overlapping pixels whose difference exceeds the threshold")
    largest_change: BoundingBox | None = Field(default=None, description="box of the largest changed region")
    verdict: Verdict
    reason: str
    _difference: np.ndarray | None = PrivateAttr(default=None)  # [0, 1] map in the working grid
    _current_view: np.ndarray | None = PrivateAttr(default=None)


class FindingChange(BaseModel):
    label: str
    prior_probability: float
    current_probability: float
    delta: float
    operating_threshold: float | None
    status: FindingStatus


class Comparison(ExpertResult):
    """What the planner reads: one verdict, the image change, and per-finding classifier deltas."""

    verdict: Verdict
    image_change: ImageChange
    findings: list[FindingChange] = Field(default_factory=list, description="largest change first")
    findings_compared: bool = Field(description="False when the classifier could not score both images")
    overlay_id: str | None = None
    note: str = ("Registration is affine only: differences from breathing, positioning or exposure may remain. "
                 "Whether both images belong to the same patient is the caller's assertion.")

    def summary_text(self) -> str:
        moved = [f"{f.label} {f.status} ({f.prior_probability:.2f} -> {f.current_probability:.2f})"
                 for f in self.findings if f.status != "unchanged"]
        untrained = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        return (f"Prior vs current{untrained}: {self.verdict}. {self.image_change.changed_fraction:.1%} of aligned "
                f"pixels differ; findings that moved: {', '.join(moved) or 'none'}.")


def _working(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    resized = cv2.resize(image.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(resized, (0, 0), 1.0)


def _register(prior: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The 2x3 warp such that prior(warp @ [x, y, 1]) ~ current(x, y), and ECC before/after."""
    import cv2

    (shift_x, shift_y), _ = cv2.phaseCorrelate(current, prior)
    warp = np.array([[1, 0, shift_x], [0, 1, shift_y]], dtype=np.float32)
    identity = np.eye(2, 3, dtype=np.float32)
    before = float(cv2.computeECC(current, prior))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    try:
        # opencv's stubs want an array for inputMask, but None (no mask) is what the C++ API takes with gaussFiltSize
        after, warp = cv2.findTransformECC(current, prior, warp, cv2.MOTION_AFFINE,  # type: ignore[call-overload]
                                           criteria, None, 5)
    except cv2.error:
        try:  # a poor start: retry from the identity before giving up
            start = identity.copy()
            after, warp = cv2.findTransformECC(current, prior, start, cv2.MOTION_AFFINE,  # type: ignore[call-overload]
                                               criteria, None, 5)
        except cv2.error as exc:
            raise ToolFailure("the prior and current images could not be aligned (registration did not converge)") from exc
    return warp, before, float(after)


class StudyDifferencer(Expert[tuple[ImageRecord, ImageRecord], ImageChange]):
    """Aligns a prior image to the current one and maps where they differ (no weights)."""

    cpu_only = True

    name = "study_differencer"
    batchable = False
    card = ModelCard(
        summary="Aligns a prior 2D image to the current one (affine) and maps where they differ.",
        modalities=None,
        dimensionality=[2],
        images_per_call=2,
        performance="Classical registration (OpenCV ECC); no learned components.",
        limitations=["affine alignment only: no deformable registration",
                     "intensities are histogram-matched, so global exposure changes are not reported as change",
                     "cannot verify that both images show the same patient"],
        references=["https://docs.opencv.org/4.x/dc/d6b/group__video__track.html"],
    )

    def __init__(self, thresholds: ChangeThresholds | None = None, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.thresholds = thresholds or ChangeThresholds()

    @property
    def cache_key(self) -> str:
        return self.name

    def load(self, device: str) -> LoadedModel:
        try:
            import cv2
            from skimage.exposure import match_histograms  # noqa: F401 - fail here, not mid-comparison
        except ImportError as exc:
            raise MissingDependency("study comparison needs opencv and scikit-image (the 'experts' extra)") from exc
        provenance = Provenance(expert=self.name, model_id="opencv-ecc-affine", device="cpu",
                                library_versions={"opencv": cv2.getVersionString(),
                                                  "scikit-image": importlib.metadata.version("scikit-image")})
        return LoadedModel(model=None, provenance=provenance)

    def predict_batch(self, loaded: LoadedModel, items: list[tuple[ImageRecord, ImageRecord]]
                      ) -> list[ImageChange | BaseException]:
        results: list[ImageChange | BaseException] = []
        for prior, current in items:
            try:
                results.append(self.compare(prior, current, loaded.provenance))
            except Exception as exc:  # noqa: BLE001 - one bad pair fails alone, returned in its slot
                results.append(exc)
        return results

    def compare(self, prior: ImageRecord, current: ImageRecord, provenance: Provenance) -> ImageChange:
        import cv2
        from skimage.exposure import match_histograms

        for record, role in ((prior, "prior"), (current, "current")):
            self.card.check_image(record, self.name)
            if record.is_constant:
                raise PreconditionFailed(f"the {role} image is constant; nothing to compare", role=role)
        if prior.modality is not current.modality:
            raise PreconditionFailed(f"the prior is {prior.modality.value} and the current is "
                                     f"{current.modality.value}; compare images of one modality")
        height, width = current.pixels.shape
        scale = _WORKING_SIZE / max(height, width)
        shape = (max(8, round(height * scale)), max(8, round(width * scale)))
        current_view, prior_view = _working(current.as_2d(), shape), _working(prior.as_2d(), shape)
        warp, before, after = _register(prior_view, current_view)
        flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
        aligned = cv2.warpAffine(prior_view, warp, (shape[1], shape[0]), flags=flags)
        overlap = cv2.warpAffine(np.ones(shape, np.float32), warp, (shape[1], shape[0]), flags=flags) > 0.99
        if overlap.sum() < 0.25 * overlap.size:
            raise ToolFailure("the aligned images overlap by less than a quarter; they may not show the same region")
        aligned = aligned.copy()
        aligned[overlap] = match_histograms(aligned[overlap], current_view[overlap])
        difference = cv2.GaussianBlur(np.abs(current_view - aligned), (0, 0), 2.0) * overlap
        changed = difference > self.thresholds.pixel_difference
        fraction = float(changed.sum() / overlap.sum())
        box = _largest_region(changed, 1.0 / scale, current.spacing_mm, (height, width))
        registration = _describe(warp, scale, before, after)
        if after < self.thresholds.min_registration_correlation:
            verdict: Verdict = "indeterminate"
            reason = f"alignment correlation {after:.2f} is below {self.thresholds.min_registration_correlation:.2f}"
        elif fraction >= self.thresholds.changed_fraction:
            verdict, reason = "changed", (f"{fraction:.2%} of aligned pixels differ by more than "
                                          f"{self.thresholds.pixel_difference:.2f}")
        else:
            verdict, reason = "unchanged", f"only {fraction:.2%} of aligned pixels differ"
        result = ImageChange(provenance=provenance, registration=registration, changed_fraction=round(fraction, 5),
                             largest_change=box, verdict=verdict, reason=reason)
        result._difference, result._current_view = difference, current_view
        return result

    def overlay_png(self, change: ImageChange) -> bytes:
        """The current image with the difference map blended over it and the largest change boxed."""
        from medagent.imaging.heatmap import heatmap_overlay_png

        if change._difference is None or change._current_view is None:
            raise ToolFailure("this comparison carries no difference map")
        heat = np.clip(change._difference / max(self.thresholds.pixel_difference * 2, 1e-6), 0, 1)
        return heatmap_overlay_png(change._current_view, heat, [], caption="difference: current vs aligned prior")


def _describe(warp: np.ndarray, scale: float, before: float, after: float) -> Registration:
    full = warp.astype(np.float64).copy()
    full[:, 2] /= scale  # translations back to current-image pixels
    linear = full[:, :2]
    return Registration(
        matrix=[[round(float(v), 5) for v in row] for row in full],
        translation_px=(round(float(full[0, 2]), 2), round(float(full[1, 2]), 2)),
        rotation_deg=round(float(np.degrees(np.arctan2(linear[1, 0], linear[0, 0]))), 3),
        scale=round(float(np.sqrt(abs(np.linalg.det(linear)))), 4),
        correlation_before=round(before, 4), correlation_after=round(after, 4),
    )


def _largest_region(changed: np.ndarray, to_full: float, spacing: tuple[float, ...] | None,
                    full_shape: tuple[int, int]) -> BoundingBox | None:
    from scipy import ndimage

    labels, count = ndimage.label(changed)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(changed, labels, index=range(1, count + 1))
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    x0, x1 = int(cols.start * to_full), min(full_shape[1], int(np.ceil(cols.stop * to_full)))
    y0, y1 = int(rows.start * to_full), min(full_shape[0], int(np.ceil(rows.stop * to_full)))
    return BoundingBox.from_pixels(x0, y0, x1, y1, spacing)


def finding_changes(prior: Classification, current: Classification, delta_threshold: float) -> list[FindingChange]:
    """Per-finding deltas; crossing the model's operating threshold makes a finding new or resolved."""
    before = {finding.label: finding for finding in prior.findings}
    changes = []
    for finding in current.findings:
        old = before.get(finding.label)
        if old is None:
            continue
        delta = finding.probability - old.probability
        threshold = finding.operating_threshold
        status: FindingStatus = "unchanged"
        if threshold is not None and old.probability < threshold <= finding.probability:
            status = "new"
        elif threshold is not None and finding.probability < threshold <= old.probability:
            status = "resolved"
        elif abs(delta) >= delta_threshold:
            status = "increased" if delta > 0 else "decreased"
        changes.append(FindingChange(label=finding.label, prior_probability=round(old.probability, 4),
                                     current_probability=round(finding.probability, 4), delta=round(delta, 4),
                                     operating_threshold=threshold, status=status))
    return sorted(changes, key=lambda change: abs(change.delta), reverse=True)


def combine(change: ImageChange, prior: Classification | None, current: Classification | None,
            thresholds: ChangeThresholds) -> Comparison:
    """One verdict from the image change and the classifier deltas."""
    findings = finding_changes(prior, current, thresholds.probability_delta) if prior and current else []
    verdict = change.verdict
    if verdict != "indeterminate" and any(f.status != "unchanged" for f in findings):
        verdict = "changed"
    provenance = current.provenance if current is not None else change.provenance
    return Comparison(provenance=provenance, verdict=verdict, image_change=change, findings=findings,
                      findings_compared=prior is not None and current is not None)
