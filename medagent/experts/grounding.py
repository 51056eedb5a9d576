"""Phrase grounding: shared result types and the parser that turns a planner's phrase into a target."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from medagent.errors import InvalidToolArguments
from medagent.imaging.record import ImageRecord
from medagent.runtime.results import BoundingBox, ExpertResult

RegionKind = Literal["anatomy", "saliency", "detection"]
Side = Literal["right", "left", "both"]
AnatomyRegion = Literal["lung", "upper_zone", "middle_zone", "lower_zone", "apex", "costophrenic_angle", "hilum"]


class GroundedRegion(BaseModel):
    label: str
    box: BoundingBox = Field(description="input image pixels (x right, y down); mm sizes when the spacing is known")
    score: float | None = Field(default=None, description="mean saliency in the region (saliency); None for anatomy")
    peak: float | None = Field(default=None, description="highest saliency in the region, relative to the map's peak")
    kind: RegionKind


class Grounding(ExpertResult):
    phrase: str = Field(description="the phrase as asked")
    interpreted_as: str = Field(description="what the phrase was understood to mean")
    kind: RegionKind = Field(description="where the boxes come from: anatomy geometry, saliency or a detector")
    regions: list[GroundedRegion]
    method: str
    image_width: int
    image_height: int
    heatmap_id: str | None = None
    overlay_id: str | None = None
    assumptions: list[str] = Field(default_factory=list)
    note: str | None = None

    def summary_text(self) -> str:
        marker = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        source = {"saliency": "saliency map, not a detection", "anatomy": "anatomical geometry",
                  "detection": "boxes predicted by a learned grounding model"}[self.kind]
        parts = []
        for region in self.regions:
            box = region.box
            size = f" ({box.width_mm:.0f} x {box.height_mm:.0f} mm)" if box.width_mm and box.height_mm else ""
            score = f", mean {region.score:.2f}" if region.score is not None else ""
            parts.append(f"{region.label} at x {box.x0}-{box.x1}, y {box.y0}-{box.y1}{size}{score}")
        found = "; ".join(parts) or "no region"
        text = f"'{self.phrase}' grounded as {self.interpreted_as} by {self.method}{marker} [{source}]: {found}."
        if self.assumptions:
            text += " Assumptions: " + " ".join(self.assumptions)
        if self.note:
            text += " " + self.note
        return text


@dataclass(frozen=True)
class GroundingRequest:
    """What a grounding expert receives: the image and the phrase (plus the classifier label for saliency)."""

    record: ImageRecord
    phrase: str
    label: str | None = None


def pixel_box(x0: int, y0: int, x1: int, y1: int, spacing_mm: tuple[float, ...] | None) -> BoundingBox:
    """A box in input pixels, with millimetre sizes only when the pixel spacing is known."""
    return BoundingBox.from_pixels(x0, y0, x1, y1, spacing_mm)


# -- phrase parsing ----------------------------------------------------------------------------

#: Classifier label (TorchXRayVision spelling) -> phrases that mean it. Data, not logic: extend freely.
PATHOLOGY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "atelectases", "atelectatic change", "volume loss"),
    "Cardiomegaly": ("cardiomegaly", "enlarged heart", "cardiac enlargement", "heart enlargement",
                     "enlarged cardiac silhouette"),
    "Consolidation": ("consolidation", "consolidations", "airspace consolidation"),
    "Edema": ("edema", "oedema", "pulmonary edema", "pulmonary oedema"),
    "Effusion": ("effusion", "effusions", "pleural effusion", "pleural effusions", "pleural fluid", "hydrothorax"),
    "Emphysema": ("emphysema", "hyperinflation"),
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum", "widened mediastinum", "mediastinal widening"),
    "Fibrosis": ("fibrosis", "pulmonary fibrosis", "fibrotic change", "fibrotic changes"),
    "Fracture": ("fracture", "fractures", "rib fracture", "rib fractures"),
    "Hernia": ("hernia", "hiatus hernia", "hiatal hernia"),
    "Infiltration": ("infiltration", "infiltrate", "infiltrates"),
    "Lung Lesion": ("lung lesion", "lesion", "pulmonary lesion"),
    "Lung Opacity": ("lung opacity", "opacity", "opacities", "airspace opacity", "opacification"),
    "Mass": ("mass", "lung mass", "pulmonary mass"),
    "Nodule": ("nodule", "nodules", "lung nodule", "pulmonary nodule"),
    "Pleural_Thickening": ("pleural thickening", "pleural plaque", "pleural plaques"),
    "Pneumonia": ("pneumonia", "pneumonic change"),
    "Pneumothorax": ("pneumothorax", "ptx"),
}

_SIDE_WORDS: dict[str, Side] = {"right": "right", "rt": "right", "left": "left", "lt": "left", "both": "both",
                                 "bilateral": "both", "bilaterally": "both"}
_FILLER = {"the", "of", "in", "at", "on", "a", "an", "lung", "lungs", "pulmonary", "field", "fields", "region",
           "area", "side", "hemithorax", "hemithoraces", "sided"}
# (words after removing sides and fillers, region, lobe name or None); matched as whole strings
_ANATOMY_PATTERNS: list[tuple[str, AnatomyRegion, str | None]] = [
    (r"", "lung", None),
    (r"(upper|top) zones?", "upper_zone", None),
    (r"(middle|mid) ?zones?", "middle_zone", None),
    (r"(lower|bottom) zones?|bases?|basal|basilar", "lower_zone", None),
    (r"upper lobes?", "upper_zone", "upper lobe"),
    (r"middle lobe", "middle_zone", "middle lobe"),
    (r"lingula|lingular", "middle_zone", "lingula"),
    (r"lower lobes?", "lower_zone", "lower lobe"),
    (r"apex|apices|apical", "apex", None),
    (r"(costophrenic|cp) (angles?|recess(es)?)|costophrenic|cpa", "costophrenic_angle", None),
    (r"hilum|hila|hilar|perihilar", "hilum", None),
]
_REGION_NAMES: dict[AnatomyRegion, str] = {
    "lung": "lung", "upper_zone": "upper zone", "middle_zone": "middle zone", "lower_zone": "lower zone",
    "apex": "apex", "costophrenic_angle": "costophrenic angle", "hilum": "hilum",
}
UNDERSTOOD_ANATOMY = ["right lung", "left lung", "both lungs", "right/left upper, middle or lower zone",
                      "right/left upper, middle or lower lobe (mapped to zones)", "lingula", "right/left apex",
                      "right/left costophrenic angle", "right/left hilum"]


class AnatomyPhrase(BaseModel):
    kind: Literal["anatomy"] = "anatomy"
    side: Side
    region: AnatomyRegion
    assumptions: list[str] = Field(default_factory=list)

    def describe(self) -> str:
        sides = "both lungs" if self.side == "both" else f"{self.side} lung"
        return sides if self.region == "lung" else f"{_REGION_NAMES[self.region]} of {sides}"


class PathologyPhrase(BaseModel):
    kind: Literal["pathology"] = "pathology"
    label: str = Field(description="the classifier label the phrase maps to")
    qualifier: str | None = Field(default=None, description="words around the finding, not used to place boxes")

    def describe(self) -> str:
        return f"classifier label {self.label}"


ParsedPhrase = AnatomyPhrase | PathologyPhrase


def normalise(phrase: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", phrase.lower()).split())


def _find_pathology(text: str) -> tuple[str, str] | None:
    """(label, matched synonym) for the longest synonym found as whole words in ``text``."""
    best: tuple[str, str] | None = None
    for label, synonyms in PATHOLOGY_SYNONYMS.items():
        for synonym in synonyms:
            if re.search(rf"\b{re.escape(synonym)}\b", text) and (best is None or len(synonym) > len(best[1])):
                best = (label, synonym)
    return best


def _unknown(phrase: str) -> InvalidToolArguments:
    findings = sorted(PATHOLOGY_SYNONYMS)
    return InvalidToolArguments(
        f"phrase not understood: {phrase[:80]!r}. Ground an anatomical phrase ({'; '.join(UNDERSTOOD_ANATOMY)}) "
        f"or a finding the classifier scores ({', '.join(findings)}).",
        understood_anatomy=UNDERSTOOD_ANATOMY, understood_findings=findings,
    )


def parse_phrase(phrase: str) -> ParsedPhrase:
    """Normalise a planner's phrase; raise :class:`InvalidToolArguments` (a ModelRetry) listing what is understood."""
    text = normalise(phrase)
    if not text:
        raise _unknown(phrase)
    pathology = _find_pathology(text)
    if pathology is not None:
        label, synonym = pathology
        rest = " ".join(re.sub(rf"\b{re.escape(synonym)}\b", " ", text).split())
        return PathologyPhrase(label=label, qualifier=rest or None)
    words = text.split()
    sides = {_SIDE_WORDS[word] for word in words if word in _SIDE_WORDS}
    rest = " ".join(word for word in words if word not in _SIDE_WORDS and word not in _FILLER)
    for pattern, region, lobe in _ANATOMY_PATTERNS:
        if re.fullmatch(pattern, rest):
            break
    else:
        raise _unknown(phrase)
    assumptions: list[str] = []
    if lobe == "lingula":
        sides = sides or {"left"}
        if sides != {"left"}:
            raise InvalidToolArguments("the lingula belongs to the left lung; ask for 'lingula' or 'left middle zone'")
    if lobe == "middle lobe":
        sides = sides or {"right"}
    if lobe == "middle lobe" and sides != {"right"}:
        raise InvalidToolArguments("only the right lung has a middle lobe (the left has the lingula); ask for "
                                   "'right middle lobe', 'lingula' or a middle zone")
    side: Side = "both" if not sides or len(sides) > 1 else next(iter(sides))
    if not sides:
        assumptions.append("No side was given: both lungs are grounded.")
    if lobe is not None:
        assumptions.append(
            f"The {lobe} is mapped to the {_REGION_NAMES[region]}: lobes are not outlined on a frontal radiograph, "
            "zones (thirds of the lung height) only approximate them.")
    return AnatomyPhrase(side=side, region=region, assumptions=assumptions)
