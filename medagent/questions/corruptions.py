"""Image corruptions for robustness arms, applied to an image's pixels before the planner and experts see it.

Severities 1-5 follow MedMNIST-C (Di Salvo et al., "MedMNIST-C: Comprehensive benchmark and improved classifier
robustness by simulating realistic image corruptions", 2024, arXiv:2406.17536; its ChestMNIST/PneumoniaMNIST
rows, the radiograph rows) which follows ImageNet-C (Hendrycks & Dietterich, ICLR 2019, arXiv:1903.12261) in form.

====================  ==========================================  ==========================================
kind                  parameter (severity 1, 2, 3, 4, 5)          operation on intensities x in [0, 1]
====================  ==========================================  ==========================================
gaussian_noise        sigma 0.04, 0.08, 0.12, 0.18, 0.26          x + N(0, sigma^2), clipped
blur                  kernel 3, 5, 7, 9, 11 px at 224 px,         Gaussian filter, reflect padding, cut at
                      sigma 0.8, 1.1, 1.4, 1.7, 2.0               the kernel radius (torchvision's default
                                                                  sigma for the kernel size)
contrast   down       factor 0.9, 0.8, 0.7, 0.6, 0.4              mean + factor * (x - mean), clipped
           up         factor 1.1, 1.2, 1.3, 1.4, 1.6              (Pillow ImageEnhance.Contrast)
exposure   down       gain 0.9, 0.8, 0.7, 0.6, 0.5                gain * x, clipped
           up         gain 1.1, 1.2, 1.3, 1.4, 1.5                (Pillow ImageEnhance.Brightness)
gamma      down       gamma 1.1, 1.2, 1.3, 1.4, 1.6 (darker)      x ** gamma
           up         gamma 0.9, 0.8, 0.7, 0.6, 0.4 (brighter)
jpeg                  quality 50, 30, 15, 10, 7                   8-bit baseline JPEG round trip (Pillow)
pixelate              factor 0.30, 0.25, 0.20, 0.15, 0.10         box-downsample by factor, box-upsample back
====================  ==========================================  ==========================================

MedMNIST-C defines blur and pixelation on 224-px images; a planner resizes any image to a few hundred pixels, so a
larger image is treated as that reference scaled up: the blur sigma grows with the shorter in-plane side / 224 and
pixelation keeps ``factor * 224`` pixels on the shorter side (images of 224 px or less use the table as it is).

Intensities are mapped to [0, 1] by the image's own finite minimum and maximum (never the display window, which
would clip a CT's HU range) and back, so the result keeps the record's range, dtype, shape and metadata; NaN/inf
voxels stay as they were. Volumes are corrupted plane by plane (NIfTI: the (x, y) planes; multi-frame DICOM:
each frame). Only ``gaussian_noise`` is random: its stream comes from the seed and the image's source hash, so
each image of a question gets its own noise and a rerun gets the same. ``source_sha256`` is kept: it names the
source file (retrieval excludes an image's clean self by it). ImageRecord has no field for what was done to the
pixels, so the caller records :meth:`Corruption.describe` beside the image (e.g. in the artifact's metadata).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from medagent.errors import PreconditionFailed
from medagent.imaging.limits import ImageLimits, check_pixel_count
from medagent.imaging.record import ImageRecord

CorruptionKind = Literal["gaussian_noise", "blur", "contrast", "exposure", "gamma", "jpeg", "pixelate"]
Direction = Literal["down", "up"]
REFERENCE_SIDE = 224  # MedMNIST-C's (and ImageNet-C's) image size
MEDMNIST_C = "MedMNIST-C (arXiv:2406.17536), ChestMNIST severities"

# kind -> severity 1..5 (kinds with a direction: (down, up))
_TABLE: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "blur": (3, 5, 7, 9, 11),
    "jpeg": (50, 30, 15, 10, 7),
    "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10),
}
_DIRECTED: dict[str, dict[str, tuple[float, ...]]] = {
    "contrast": {"down": (0.9, 0.8, 0.7, 0.6, 0.4), "up": (1.1, 1.2, 1.3, 1.4, 1.6)},
    "exposure": {"down": (0.9, 0.8, 0.7, 0.6, 0.5), "up": (1.1, 1.2, 1.3, 1.4, 1.5)},
    "gamma": {"down": (1.1, 1.2, 1.3, 1.4, 1.6), "up": (0.9, 0.8, 0.7, 0.6, 0.4)},
}


class Corruption(BaseModel):
    """One corruption at one severity; ``direction`` applies to contrast, exposure and gamma only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CorruptionKind
    severity: int = Field(ge=1, le=5)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    direction: Direction | None = Field(default=None, description="contrast/exposure/gamma: down (default) or up")

    @model_validator(mode="after")
    def _direction_fits(self) -> Corruption:
        if self.direction is not None and self.kind not in _DIRECTED:
            raise ValueError(f"{self.kind} has no direction (only {', '.join(_DIRECTED)} do)")
        return self

    @property
    def parameter(self) -> float:
        """The table's parameter at this severity (sigma, kernel size, factor, gain, gamma or JPEG quality)."""
        if self.kind in _DIRECTED:
            return _DIRECTED[self.kind][self.direction or "down"][self.severity - 1]
        return _TABLE[self.kind][self.severity - 1]

    @property
    def label(self) -> str:
        """e.g. ``blur-3`` or ``contrast_up-2``: a name for arms, tables and plots."""
        direction = f"_{self.direction}" if self.direction == "up" else ""
        return f"{self.kind}{direction}-{self.severity}"

    def describe(self) -> dict[str, Any]:
        """What the caller records beside a corrupted image."""
        return {"corruption": self.label, "kind": self.kind, "severity": self.severity, "seed": self.seed,
                "direction": self.direction, "parameter": self.parameter, "reference": MEDMNIST_C}


def corrupt(record: ImageRecord, corruption: Corruption, *, limits: ImageLimits | None = None) -> ImageRecord:
    """A new record whose pixels carry ``corruption``; deterministic for a seed. Refuses (typed) images over the
    pixel limit and arrays that are not images; a constant image comes back unchanged."""
    pixels = record.pixels
    if pixels.ndim < 2 or pixels.size == 0 or min(pixels.shape) < 1:
        raise PreconditionFailed("a corruption needs an image of at least two non-empty dimensions")
    check_pixel_count(tuple(int(extent) for extent in pixels.shape), limits or ImageLimits())
    in_plane = (0, 1) if record.source_format == "nifti" else (pixels.ndim - 2, pixels.ndim - 1)
    planes = np.moveaxis(pixels, in_plane, (-2, -1))
    stacked_shape = planes.shape
    planes = planes.reshape(-1, *stacked_shape[-2:])
    finite = np.isfinite(planes)
    if not finite.any():
        return record.model_copy(update={"pixels": pixels.copy()})
    if finite.all():
        low, high = float(planes.min()), float(planes.max())
    else:
        low = float(np.min(planes, where=finite, initial=np.inf))
        high = float(np.max(planes, where=finite, initial=-np.inf))
    if high <= low:
        return record.model_copy(update={"pixels": pixels.copy()})
    rng = np.random.default_rng(_entropy(corruption.seed, record.source_sha256))
    out = np.empty(planes.shape, dtype=np.float32)
    for index, plane in enumerate(planes):
        unit = (np.where(finite[index], plane, low).astype(np.float64) - low) / (high - low)
        out[index] = np.clip(_apply(unit, corruption, rng), 0.0, 1.0) * (high - low) + low
    out = np.where(finite, out, planes)  # non-finite voxels are kept, not invented
    restored = np.moveaxis(out.reshape(stacked_shape), (-2, -1), in_plane)
    if np.issubdtype(pixels.dtype, np.integer):
        restored = np.rint(restored)
    return record.model_copy(update={"pixels": np.ascontiguousarray(restored.astype(pixels.dtype))})


def _entropy(seed: int, source_sha256: str) -> list[int]:
    digest = hashlib.sha256(source_sha256.encode("utf-8", "replace")).digest()
    return [seed, int.from_bytes(digest[:8], "big")]


def _apply(unit: np.ndarray, corruption: Corruption, rng: np.random.Generator) -> np.ndarray:
    """One 2D plane with intensities in [0, 1] -> its corrupted version (clipped by the caller)."""
    value = corruption.parameter
    short_side = min(unit.shape)
    if corruption.kind == "gaussian_noise":
        return unit + rng.standard_normal(unit.shape) * value
    if corruption.kind == "blur":
        radius = (value - 1) / 2
        sigma = 0.3 * (radius - 1) + 0.8  # torchvision's sigma for a kernel of this size
        scale = max(1.0, short_side / REFERENCE_SIDE)
        return ndimage.gaussian_filter(unit, sigma=sigma * scale, truncate=radius / sigma, mode="reflect")
    if corruption.kind == "contrast":
        return unit.mean() + value * (unit - unit.mean())
    if corruption.kind == "exposure":
        return unit * value
    if corruption.kind == "gamma":
        return np.power(unit, value)
    if corruption.kind == "jpeg":
        return _jpeg_round_trip(unit, int(value))
    return _pixelate(unit, value * min(1.0, REFERENCE_SIDE / short_side))


def _jpeg_round_trip(unit: np.ndarray, quality: int) -> np.ndarray:
    image = Image.fromarray(np.rint(unit * 255.0).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.float64) / 255.0


def _pixelate(unit: np.ndarray, factor: float) -> np.ndarray:
    rows, columns = unit.shape
    image = Image.fromarray(unit.astype(np.float32))
    small = image.resize((max(1, int(columns * factor)), max(1, int(rows * factor))), Image.Resampling.BOX)
    return np.asarray(small.resize((columns, rows), Image.Resampling.BOX), dtype=np.float64)
