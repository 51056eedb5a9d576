"""Image quality gate: exposure, contrast, noise and sharpness measures with plain-language flags."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from medagent.cards import ModelCard
from medagent.imaging.record import ImageRecord
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import ExpertResult, Provenance

FlagCode = Literal[
    "constant", "too_dark", "too_bright", "low_contrast", "clipped_dark", "clipped_bright", "noisy", "blurred", "cropped"
]

_ANALYSIS_SIZE = 256  # measures are taken at one resolution so thresholds mean the same for every input


class QualityFlag(BaseModel):
    code: FlagCode
    severity: Literal["warning", "reject"]
    message: str


class QualityMeasures(BaseModel):
    mean_intensity: float = Field(description="mean of the [0, 1] display image")
    contrast_std: float
    dynamic_range_p1_p99: float
    clipped_dark_fraction: float
    clipped_bright_fraction: float
    noise_sigma: float = Field(description="Immerkaer's noise estimate on the [0, 1] scale")
    sharpness: float = Field(description="fine-detail energy (image minus its 1-pixel Gaussian blur) relative to contrast")
    border_content: float = Field(description="share of the image border occupied by bright anatomy")


class QualityReport(ExpertResult):
    usable: bool
    flags: list[QualityFlag]
    measures: QualityMeasures | None

    def summary_text(self) -> str:
        verdict = "usable" if self.usable else "NOT usable"
        problems = "; ".join(flag.message for flag in self.flags) or "no quality problems found"
        return f"Image quality: {verdict}; {problems}."


def _resample(image: np.ndarray) -> np.ndarray:
    import cv2

    height, width = image.shape
    scale = _ANALYSIS_SIZE / max(height, width)
    size = (max(3, round(width * scale)), max(3, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32), size, interpolation=interpolation)


def _noise_sigma(image: np.ndarray) -> float:
    """J. Immerkaer, 'Fast noise variance estimation', CVIU 1996: a Laplacian-difference mask."""
    from scipy.ndimage import convolve

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    height, width = image.shape
    if height < 3 or width < 3:
        return 0.0
    response = np.abs(convolve(image, mask, mode="reflect"))[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) * response.sum() / (6.0 * (width - 2) * (height - 2)))


def measure(image: np.ndarray) -> QualityMeasures:
    from scipy.ndimage import gaussian_filter

    image = _resample(image)
    std = float(image.std())
    p1, p99 = np.percentile(image, [1, 99])
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return QualityMeasures(
        mean_intensity=float(image.mean()),
        contrast_std=std,
        dynamic_range_p1_p99=float(p99 - p1),
        clipped_dark_fraction=float((image <= 0.005).mean()),
        clipped_bright_fraction=float((image >= 0.995).mean()),
        noise_sigma=_noise_sigma(image),
        sharpness=float(np.abs(image - gaussian_filter(image, 1.0)).mean() / std) if std > 0 else 0.0,
        border_content=float((border > 0.75).mean()),
    )


def flags_for(measures: QualityMeasures) -> list[QualityFlag]:
    """Thresholds are heuristics set on typical 8-bit and windowed DICOM radiographs; see the card."""
    flags: list[QualityFlag] = []

    def add(code: FlagCode, severity: Literal["warning", "reject"], message: str) -> None:
        flags.append(QualityFlag(code=code, severity=severity, message=message))

    if measures.mean_intensity < 0.12:
        add("too_dark", "warning", "the image is very dark overall (possible overexposure or a wrong window)")
    if measures.mean_intensity > 0.88:
        add("too_bright", "warning", "the image is very bright overall (possible underexposure or a wrong window)")
    if measures.dynamic_range_p1_p99 < 0.15:
        add("low_contrast", "reject", "contrast is too low to show anatomy")
    if measures.clipped_dark_fraction > 0.25:
        add("clipped_dark", "warning", "over a quarter of the pixels are clipped to black")
    if measures.clipped_bright_fraction > 0.25:
        add("clipped_bright", "warning", "over a quarter of the pixels are clipped to white")
    if measures.noise_sigma > 0.04:
        add("noisy", "warning", "the image is noisy; fine detail may be lost")
    if measures.sharpness < 0.004:
        add("blurred", "reject", "the image is too blurred to interpret (almost no fine detail)")
    elif measures.sharpness < 0.006:
        add("blurred", "warning", "the image looks blurred (little fine detail for its contrast)")
    if measures.border_content > 0.5:
        add("cropped", "warning", "bright anatomy touches much of the border: the field of view may be cropped")
    return flags


class QualityAssessor(Expert[ImageRecord, QualityReport]):
    cpu_only = True
    name = "image_quality"
    card = ModelCard(
        summary=(
            "Measures exposure, contrast, noise and sharpness of any 2D image (or the middle slice of a volume) "
            "and flags images too poor to interpret. Run it before other experts."
        ),
        modalities=None,
        dimensionality=[2, 3, 4],
        performance="Classical measures; thresholds are heuristics, not validated against reader studies.",
        limitations=["judges the displayed image only", "cannot see positioning or rotation errors"],
    )

    @property
    def cache_key(self) -> str:
        return self.name

    def load(self, device: str) -> LoadedModel:
        return LoadedModel(model=None, provenance=Provenance(expert=self.name, model_id="medagent/quality-v1"))

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[QualityReport | BaseException]:
        results: list[QualityReport | BaseException] = []
        for record in items:
            try:
                results.append(self.assess(record, loaded.provenance))
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results.append(exc)
        return results

    def assess(self, record: ImageRecord, provenance: Provenance) -> QualityReport:
        if record.is_constant:
            flag = QualityFlag(code="constant", severity="reject", message="every pixel has the same value")
            return QualityReport(provenance=provenance, usable=False, flags=[flag], measures=None)
        measures = measure(record.as_2d())
        flags = flags_for(measures)
        usable = not any(flag.severity == "reject" for flag in flags)
        return QualityReport(provenance=provenance, usable=usable, flags=flags, measures=measures)
