"""Lung phrases ("right lower zone", "left costophrenic angle", ...) grounded on lung boxes or lung masks.

Zones are thirds of the lung height, the convention for describing frontal chest radiographs. By default
the lungs come from the lungs-finder boxes; a mask provider (a lung-field segmenter) gives tighter
regions: each zone is then the mask's extent within that third.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medagent.cards import ModelCard
from medagent.errors import ConfigurationError, PreconditionFailed, ToolFailure
from medagent.experts.grounding import (
    AnatomyPhrase,
    AnatomyRegion,
    GroundedRegion,
    Grounding,
    PathologyPhrase,
    parse_phrase,
    pixel_box,
)
from medagent.experts.lungs import LungLocalizer
from medagent.imaging.record import ImageRecord
from medagent.runtime.results import Provenance

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, half-open
MASK_LABELS = {"right": "Right Lung", "left": "Left Lung"}
_LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


@dataclass(frozen=True)
class LungMasks:
    """Lung-field masks in the input image's pixel grid: {"Right Lung": bool (H, W), "Left Lung": ...}."""

    masks: Mapping[str, np.ndarray]
    provenance: Provenance


#: How a lung-field segmenter plugs in: ``async def provider(record) -> LungMasks``.
LungMaskProvider = Callable[[ImageRecord], Awaitable[LungMasks]]


def view_assumption(record: ImageRecord) -> str:
    """Which image side is the patient's right; refuses lateral views, where the lungs overlap."""
    view = (record.metadata.view_position or "").strip().upper()
    if view in _LATERAL_VIEWS:
        raise PreconditionFailed("lung phrases need a frontal (PA/AP) view; this image is a lateral view",
                                 view_position=view)
    if view.startswith(("PA", "AP")):
        return f"{view[:2]} view (from the image metadata): the patient's right is on the image's left."
    return ("The view position is not recorded: a frontal (PA/AP) view in the standard display is assumed, "
            "with the patient's right on the image's left.")


def region_of_box(lung: Box, side: str, region: AnatomyRegion) -> Box:
    """A region of one lung from its box. In a frontal view the right lung's lateral edge is its left (low x)."""
    x0, y0, x1, y1 = lung
    height, width = y1 - y0, x1 - x0
    third = height / 3
    lateral_low_x = side == "right"
    if region == "lung":
        return lung
    if region in ("upper_zone", "middle_zone", "lower_zone"):
        index = ("upper_zone", "middle_zone", "lower_zone").index(region)
        bottom = y1 if index == 2 else round(y0 + (index + 1) * third)
        return x0, round(y0 + index * third), x1, bottom
    if region == "apex":
        return x0, y0, x1, round(y0 + height / 6)
    if region == "costophrenic_angle":  # lower fifth, lateral 40 %
        cut = round(width * 0.4)
        columns = (x0, x0 + cut) if lateral_low_x else (x1 - cut, x1)
        return columns[0], round(y1 - height / 5), columns[1], y1
    # hilum: middle third of the height, medial third of the width
    cut = round(width / 3)
    columns = (x1 - cut, x1) if lateral_low_x else (x0, x0 + cut)
    return columns[0], round(y0 + third), columns[1], round(y0 + 2 * third)


def _extent(mask: np.ndarray) -> Box | None:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def region_of_mask(mask: np.ndarray, side: str, region: AnatomyRegion) -> Box | None:
    """The same regions from a mask: bands of the mask's height, boxed to the mask pixels inside them."""
    lung = _extent(mask)
    if lung is None:
        return None
    band = region_of_box(lung, side, region)
    x0, y0, x1, y1 = band
    if region == "hilum":
        return band  # the hilum lies at the mask's medial edge, partly outside it
    inside = _extent(mask[y0:y1, x0:x1])
    if inside is None:
        return None
    return x0 + inside[0], y0 + inside[1], x0 + inside[2], y0 + inside[3]


class LungPhraseGrounder:
    """Grounds anatomical lung phrases; needs no weights (the default lung finder is classical)."""

    name = "lung_phrase_grounder"

    def __init__(self, localizer: LungLocalizer, mask_provider: LungMaskProvider | None = None,
                 mask_ready: Callable[[], bool] | None = None) -> None:
        self.localizer = localizer
        self.mask_provider = mask_provider
        self.mask_ready = mask_ready  # e.g. the segmenter's ``ready``; None: assume the provider can run

    @property
    def card(self) -> ModelCard:
        return self.localizer.card

    def ready(self) -> bool:
        if self.mask_provider is None:
            return self.localizer.ready()
        return self.mask_ready() if self.mask_ready is not None else True

    async def ground(self, record: ImageRecord, phrase: str | AnatomyPhrase) -> Grounding:
        parsed = parse_phrase(phrase) if isinstance(phrase, str) else phrase
        if isinstance(parsed, PathologyPhrase):
            raise ConfigurationError("the lung phrase grounder grounds anatomy; route findings to saliency")
        self.localizer.card.check_image(record, self.name)
        assumptions = [view_assumption(record), *parsed.assumptions]
        height, width = record.as_2d().shape
        sides: list[Literal["right", "left"]] = ["right", "left"] if parsed.side == "both" else [parsed.side]
        if self.mask_provider is None:
            lungs = await self.localizer(record)
            boxes = {lung.side: (lung.box.x0, lung.box.y0, lung.box.x1, lung.box.y1) for lung in lungs.lungs}
            assumptions += [f"The {lung.side} lung was not detected; its box mirrors the other lung across the spine."
                            for lung in lungs.lungs if lung.method == "mirrored" and lung.side in sides]
            regions = {side: region_of_box(boxes[side], side, parsed.region) for side in sides}
            provenance, method = lungs.provenance, "zone geometry on lungs-finder lung boxes"
        else:
            result = await self.mask_provider(record)
            regions = {side: self._mask_region(result, side, parsed.region, (height, width)) for side in sides}
            provenance, method = result.provenance, f"zone geometry on lung-field masks ({result.provenance.model_id})"
        grounded = [
            GroundedRegion(label=self._label(side, parsed.region), box=pixel_box(*box, record.spacing_mm),
                           kind="anatomy")
            for side, box in regions.items()
        ]
        return Grounding(
            provenance=provenance.model_copy(update={"expert": self.name}),
            phrase=phrase if isinstance(phrase, str) else parsed.describe(),
            interpreted_as=parsed.describe(), kind="anatomy", regions=grounded, method=method,
            image_width=width, image_height=height, assumptions=assumptions,
            note="Zones are thirds of each lung's height; regions are anatomical estimates, not findings.",
        )

    @staticmethod
    def _label(side: str, region: AnatomyRegion) -> str:
        return f"{side} lung" if region == "lung" else f"{side} {region.replace('_', ' ')}"

    @staticmethod
    def _mask_region(result: LungMasks, side: str, region: AnatomyRegion, shape: tuple[int, int]) -> Box:
        masks = {label.lower(): mask for label, mask in result.masks.items()}
        mask = masks.get(MASK_LABELS[side].lower())
        if mask is None:
            raise ConfigurationError(f"the lung mask provider gave no {MASK_LABELS[side]!r} mask "
                                     f"(labels: {', '.join(result.masks)})")
        if mask.shape != shape:
            raise ConfigurationError(f"lung masks must match the image grid {shape}; got {mask.shape}")
        box = region_of_mask(np.asarray(mask, dtype=bool), side, region)
        if box is None:
            raise ToolFailure(f"the lung-field segmentation found no {side} lung {region.replace('_', ' ')}")
        return box
