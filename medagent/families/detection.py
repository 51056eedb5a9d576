"""Open-vocabulary detection and phrase grounding (Grounding DINO, OWLv2) from a local transformers folder.

A phrase on an image becomes boxes with the detector's scores, in input-image pixels, as a
:class:`~medagent.experts.grounding.Grounding` of kind ``detection``: the same result the other grounding tools
return, so a promptable segmenter (or the planner) can turn its boxes into masks. Several (image, phrase) calls are
one forward pass: the processors pad images and texts to a common size.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medagent.config import Settings
from medagent.errors import InvalidToolArguments
from medagent.experts.grounding import GroundedRegion, Grounding, GroundingRequest
from medagent.families.card import DetectionCard
from medagent.families.folder import ModelFolder, model_bytes
from medagent.imaging.overlay import boxes_overlay_png
from medagent.imaging.record import ImageRecord
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import BoundingBox
from medagent.tools.artifacts import ArtifactKind
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy

MAX_PHRASE = 200
_SPECIAL = re.compile(r"\[(?:CLS|SEP|PAD|UNK|MASK)\]")
MODEL_CLASSES = {"grounding_dino": "GroundingDinoForObjectDetection", "owlv2": "Owlv2ForObjectDetection"}


class DetectInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    phrase: str = Field(min_length=1, max_length=MAX_PHRASE,
                        description="what to find, in plain words ('pleural effusion', 'left lung', 'nodule')")


def clean_phrase(phrase: str) -> str:
    """One line of printable text (a phrase reaches the tokenizer and, quoted, the planner)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in phrase).split())[:MAX_PHRASE]


def image_box(box: Any, width: int, height: int, spacing_mm: tuple[float, ...] | None) -> BoundingBox | None:
    """A detector's float (x0, y0, x1, y1) as whole input pixels inside the image; None when nothing is left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    left, top = max(0, math.floor(min(x0, x1))), max(0, math.floor(min(y0, y1)))
    right, bottom = min(width, math.ceil(max(x0, x1))), min(height, math.ceil(max(y0, y1)))
    if right <= left or bottom <= top:
        return None  # wholly outside the image or of no area
    return BoundingBox.from_pixels(left, top, right, bottom, spacing_mm)


def matched_words(text: str) -> str:
    """Grounding DINO's label of a box: the phrase's tokens that scored above ``text_threshold``, decoded (special
    tokens and the closing '.' dropped); '' when none did."""
    return clean_phrase(_SPECIAL.sub(" ", text)).strip(" .")


def rgb(record: ImageRecord) -> Any:
    """The record's display view as the 8-bit RGB image these processors expect."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.clip(record.as_2d(), 0.0, 1.0) * 255).astype(np.uint8)).convert("RGB")


class PhraseDetector(Expert[GroundingRequest, Grounding]):
    """One card's detector. Build it with :func:`detector` (the name and model card come from the card)."""

    name = "phrase_detector"

    def __init__(self, family_card: DetectionCard, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.family_card = family_card
        self.folder = ModelFolder(family_card, self.name)

    @property
    def cache_key(self) -> str:
        return f"detection:{self.name}:{self.folder.path}:{self.device}"

    def weights_status(self) -> WeightsStatus:
        return self.folder.status()

    def load(self, device: str) -> LoadedModel:
        model, processor = self.folder.load(MODEL_CLASSES[self.family_card.architecture], device=device)
        return LoadedModel(model={"model": model, "processor": processor},
                           provenance=self.folder.provenance(device), size_bytes=model_bytes(model))

    def predict_batch(self, loaded: LoadedModel, items: list[GroundingRequest]) -> list[Grounding | BaseException]:
        results: list[Grounding | BaseException | None] = [None] * len(items)
        good: list[int] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, GroundingRequest) or not clean_phrase(item.phrase):
                    raise TypeError(f"expected a GroundingRequest with a phrase, got {type(item).__name__}")
                self.card.check_image(item.record, self.name)
                good.append(index)
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results[index] = exc
        if good:
            batch = [items[i] for i in good]
            for index, detections in zip(good, self._detect(loaded, batch), strict=True):
                results[index] = self._grounding(loaded, items[index], detections)
        return results  # type: ignore[return-value]

    def _detect(self, loaded: LoadedModel, items: list[GroundingRequest]) -> list[dict[str, Any]]:
        """One forward pass for every item: per item the post-processed scores and boxes (input pixels)."""
        import torch

        model, processor = loaded.model["model"], loaded.model["processor"]
        card = self.family_card
        sizes = [item.record.as_2d().shape for item in items]
        images = [rgb(item.record) for item in items]
        phrases = [clean_phrase(item.phrase).lower() for item in items]
        if card.architecture == "grounding_dino":  # lower case, '.'-terminated: the text format it was trained on
            text: Any = [p if p.endswith(".") else f"{p}." for p in phrases]
            limit: dict[str, Any] = {"padding": True, "max_length": int(model.config.max_text_len)}
        else:  # OWLv2 pads every query to the text tower's full length itself
            text, limit = [[p] for p in phrases], {}
        inputs = processor(images=images, text=text, return_tensors="pt", truncation=True, **limit)
        inputs = inputs.to(loaded.provenance.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            outputs = model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        if card.architecture == "grounding_dino":
            found: list[dict[str, Any]] = processor.post_process_grounded_object_detection(
                outputs, input_ids=inputs["input_ids"], threshold=card.box_threshold,
                text_threshold=card.text_threshold, target_sizes=sizes)
        else:  # OWLv2 pads to a square itself and scales its boxes back
            found = processor.post_process_grounded_object_detection(outputs, threshold=card.box_threshold,
                                                                     target_sizes=sizes)
        return found

    def _grounding(self, loaded: LoadedModel, item: GroundingRequest, found: dict[str, Any]) -> Grounding:
        record = item.record
        height, width = record.as_2d().shape
        phrase = clean_phrase(item.phrase)
        words = [matched_words(text) for text in found["text_labels"]] if found.get("text_labels") else None
        ranked = sorted(zip(found["scores"].tolist(), found["boxes"].tolist(), words or [phrase] * len(found["boxes"]),
                            strict=True), key=lambda p: -p[0])
        regions: list[GroundedRegion] = []
        for score, box, label in ranked:
            pixels = image_box(box, width, height, record.spacing_mm)
            if pixels is not None and label:  # a box no word of the phrase scored for does not ground it
                regions.append(GroundedRegion(label=label, box=pixels, score=round(float(score), 4), kind="detection"))
            if len(regions) == self.family_card.max_boxes:
                break
        return Grounding(
            provenance=loaded.provenance, phrase=phrase, interpreted_as=f"the phrase '{phrase}'", kind="detection",
            regions=regions, method=f"{self.family_card.architecture} detector {loaded.provenance.model_id}",
            image_width=width, image_height=height,
            note=None if regions else "No box scored above the card's thresholds for this phrase.")


def detector(card: DetectionCard, settings: Settings | None = None) -> PhraseDetector:
    """The card's detector: named after the card, its model card built from the card's fields."""
    settings = settings or Settings()
    summary = (f"Finds what a phrase describes on an image with the open-vocabulary detector {card.architecture} and "
               f"returns up to {card.max_boxes} boxes with scores in image pixels (sizes in mm when the pixel "
               "spacing is known); the boxes can prompt a promptable segmenter.")
    subclass = type(f"PhraseDetector_{card.name}", (PhraseDetector,),
                    {"name": card.name, "card": card.model_card(summary)})
    expert: PhraseDetector = subclass(card, device=settings.device,
                                      max_batch_size=card.max_batch_size or settings.max_batch_size,
                                      max_wait_ms=settings.max_batch_wait_ms)
    return expert


def _overlay(image: ImageRecord, result: Grounding) -> bytes:
    boxes = [(f"{region.label} {region.score:.2f}", (region.box.x0, region.box.y0, region.box.x1, region.box.y1))
             for region in result.regions]
    return boxes_overlay_png(image.as_2d(), boxes)


async def detect(expert: PhraseDetector, image: ImageRecord, phrase: str) -> Grounding:
    """The detector's grounding of ``phrase`` on ``image`` after the card's image check (no overlay)."""
    expert.card.check_image(image, expert.name)
    if not clean_phrase(phrase):
        raise InvalidToolArguments("`phrase` has no printable words: say what to find", tool=expert.name)
    return await expert(GroundingRequest(record=image, phrase=phrase))


def tools(card: DetectionCard, settings: Settings) -> list[Tool[Any, Any]]:
    """``{name}_detect``: boxes for a phrase on an attached image, with an overlay PNG of them."""
    expert = detector(card, settings)
    name = f"{card.name}_detect"

    async def run(arguments: DetectInput, context: ToolContext) -> Grounding:
        image = context.load_image(arguments.image_id)
        result = await detect(expert, image, arguments.phrase)
        png = await asyncio.to_thread(_overlay, image, result)  # encoding a radiograph stalls the event loop
        overlay = context.artifacts.put_png(png, ArtifactKind.OVERLAY, provenance=result.provenance.model_dump(),
                                            metadata={"source": arguments.image_id, "method": result.method,
                                                      "shows": f"detections of '{result.phrase}'"})
        return result.model_copy(update={"overlay_id": overlay.id})

    return [Tool(name=name, card=expert.card, input_model=DetectInput, output_model=Grounding, run=run,
                 policy=ToolPolicy(timeout_s=card.timeout_s, max_concurrency=card.max_concurrency),
                 ready=expert.ready, close=expert.close)]
