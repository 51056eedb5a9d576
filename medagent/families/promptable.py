"""Promptable segmentation (SAM; MedSAM's weights load as a ``SamModel``) from a local transformers folder.

Box and point prompts are in input-image pixels; the masks come back on the input grid and are measured with the
image's own pixel spacing (:meth:`Segmentation.from_masks`), stored as a mask NPZ and an overlay PNG exactly as the
other segmentation tools store them. A batch runs the image encoder once for all its images (the costly part);
the light prompt decoder then runs per image, since images carry different numbers of prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medagent.config import Settings
from medagent.errors import InvalidToolArguments
from medagent.experts.grounding import Grounding
from medagent.experts.segmentation import Segmentation
from medagent.families.card import PromptableSegmentationCard
from medagent.families.detection import rgb
from medagent.families.folder import ModelFolder, model_bytes
from medagent.imaging.record import ImageRecord
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import BoundingBox
from medagent.tools.segmentation_tools import store_masks
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy

MAX_BOXES = 16
MAX_POINTS = 16
_MAX_SIDE = 1 << 16  # beyond any image the loader accepts; the real bound is the image's own size
_LABEL = re.compile(r"[^A-Za-z0-9 _().,-]+")

Box = tuple[int, int, int, int]


class BoxPrompt(BaseModel):
    """A box in input pixels (x right, y down, half-open), e.g. one a detector or the lung localizer returned."""

    model_config = ConfigDict(extra="forbid")

    x0: int = Field(ge=0, le=_MAX_SIDE)
    y0: int = Field(ge=0, le=_MAX_SIDE)
    x1: int = Field(ge=1, le=_MAX_SIDE)
    y1: int = Field(ge=1, le=_MAX_SIDE)
    label: str | None = Field(default=None, max_length=64, description="the mask's name; default 'box N'")
    # a detector's box carries its size in mm: accepted so a box can be passed on exactly as it was returned
    width_mm: float | None = Field(default=None, description="ignored")
    height_mm: float | None = Field(default=None, description="ignored")


class PointPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0, le=_MAX_SIDE)
    y: int = Field(ge=0, le=_MAX_SIDE)
    foreground: bool = Field(default=True, description="false: a point the mask must leave out")


class SegmentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    boxes: list[BoxPrompt] = Field(default_factory=list, max_length=MAX_BOXES,
                                   description="one mask per box; points, when given too, refine every box's mask")
    points: list[PointPrompt] = Field(default_factory=list, max_length=MAX_POINTS,
                                      description="without boxes: one mask from all the points together")


class PromptedSegmentation(Segmentation):
    prompt_boxes: dict[str, BoundingBox] = Field(default_factory=dict, description="each mask's prompt box")
    predicted_iou: dict[str, float] = Field(default_factory=dict, description="the model's own estimate of each "
                                                                             "mask's quality (0-1)")
    grounding: Grounding | None = Field(default=None, description="where the boxes came from, when a chained tool "
                                                                  "found them")
    note: str | None = None

    def summary_text(self) -> str:
        text = super().summary_text()
        if self.grounding is not None:
            text += f" Boxes from: {self.grounding.summary_text()}"
        return f"{text} {self.note}" if self.note else text


@dataclass(frozen=True)
class PromptRequest:
    """What the segmenter receives: the image, labelled boxes and (x, y, foreground) points, in input pixels."""

    record: ImageRecord
    boxes: tuple[tuple[str, Box], ...] = ()
    points: tuple[tuple[int, int, bool], ...] = ()


def mask_label(text: str, taken: set[str]) -> str:
    """A mask name (it keys the NPZ): plain characters only, unique within the result."""
    base = " ".join(_LABEL.sub(" ", text).split())[:64] or "mask"
    label, index = base, 2
    while label in taken:
        label, index = f"{base} ({index})", index + 1
    taken.add(label)
    return label


def prompt_request(record: ImageRecord, boxes: list[BoxPrompt], points: list[PointPrompt], tool: str) -> PromptRequest:
    """The prompts checked against the image's size: a mistake is an InvalidToolArguments naming the bounds."""
    height, width = record.as_2d().shape
    if not boxes and not points:
        raise InvalidToolArguments("give at least one box or point (input pixels)", tool=tool)
    bounds = f"the image is {width} x {height} pixels: 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}"
    taken: set[str] = set()
    checked: list[tuple[str, Box]] = []
    for index, box in enumerate(boxes):
        if not (box.x0 < box.x1 <= width and box.y0 < box.y1 <= height):
            raise InvalidToolArguments(f"box {index + 1} ({box.x0}, {box.y0}, {box.x1}, {box.y1}) is not inside "
                                       f"the image: {bounds}", tool=tool, width=width, height=height)
        checked.append((mask_label(box.label or f"box {index + 1}", taken), (box.x0, box.y0, box.x1, box.y1)))
    for index, point in enumerate(points):
        if not (point.x < width and point.y < height):
            raise InvalidToolArguments(f"point {index + 1} ({point.x}, {point.y}) is outside the image: it is "
                                       f"{width} x {height} pixels (x < {width}, y < {height})",
                                       tool=tool, width=width, height=height)
    return PromptRequest(record, tuple(checked), tuple((p.x, p.y, p.foreground) for p in points))


class PromptableSegmenter(Expert[PromptRequest, PromptedSegmentation]):
    """One card's segmenter. Build it with :func:`segmenter` (the name and model card come from the card)."""

    name = "promptable_segmenter"

    def __init__(self, family_card: PromptableSegmentationCard, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.family_card = family_card
        self.folder = ModelFolder(family_card, self.name)

    @property
    def cache_key(self) -> str:
        return f"promptable:{self.name}:{self.folder.path}:{self.device}"

    def weights_status(self) -> WeightsStatus:
        return self.folder.status()

    def load(self, device: str) -> LoadedModel:
        model, processor = self.folder.load("SamModel", device=device)
        return LoadedModel(model={"model": model, "processor": processor},
                           provenance=self.folder.provenance(device), size_bytes=model_bytes(model))

    def predict_batch(self, loaded: LoadedModel, items: list[PromptRequest]
                      ) -> list[PromptedSegmentation | BaseException]:
        import torch

        model, processor = loaded.model["model"], loaded.model["processor"]
        results: list[PromptedSegmentation | BaseException | None] = [None] * len(items)
        encoded: dict[int, Any] = {}
        for index, item in enumerate(items):
            try:
                if not isinstance(item, PromptRequest) or not (item.boxes or item.points):
                    raise TypeError(f"expected a PromptRequest with prompts, got {type(item).__name__}")
                self.card.check_image(item.record, self.name)
                encoded[index] = processor(images=rgb(item.record), return_tensors="pt", **_prompts(item))
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results[index] = exc
        if not encoded:
            return results  # type: ignore[return-value]
        device = loaded.provenance.device
        with torch.inference_mode():  # the image encoder once for the whole batch
            pixels = torch.cat([encoded[i]["pixel_values"] for i in encoded]).to(device, model.dtype)
            embeddings = model.get_image_embeddings(pixels)
            for row, index in enumerate(encoded):
                prompts = {key: encoded[index][key].to(device, model.dtype if key != "input_labels" else torch.long)
                           for key in ("input_boxes", "input_points", "input_labels") if key in encoded[index]}
                output = model(image_embeddings=embeddings[row:row + 1], multimask_output=False, **prompts)
                masks = processor.post_process_masks(
                    output.pred_masks.float().cpu(), encoded[index]["original_sizes"],
                    encoded[index]["reshaped_input_sizes"], mask_threshold=self.family_card.mask_threshold)[0]
                results[index] = self._result(loaded, items[index], masks[:, 0].numpy(),
                                              output.iou_scores.float().cpu()[0, :, 0].tolist())
        return results  # type: ignore[return-value]

    def _result(self, loaded: LoadedModel, item: PromptRequest, masks: Any, iou: list[float]
                ) -> PromptedSegmentation:
        labels = [label for label, _ in item.boxes] or ["points"]
        spacing = item.record.spacing_mm
        return PromptedSegmentation.from_masks(  # type: ignore[return-value]
            dict(zip(labels, masks, strict=True)), item.record, loaded.provenance,
            segmenter=f"{self.name} (promptable {self.family_card.architecture})",
            prompt_boxes={label: BoundingBox.from_pixels(*box, spacing) for label, box in item.boxes},
            predicted_iou={label: round(min(1.0, max(0.0, value)), 4) for label, value in zip(labels, iou, strict=True)})


def _prompts(item: PromptRequest) -> dict[str, Any]:
    """SAM's processor arguments: with boxes, the points (if any) join every box's prompt."""
    prompts: dict[str, Any] = {}
    copies = max(1, len(item.boxes))
    if item.boxes:
        prompts["input_boxes"] = [[list(box) for _, box in item.boxes]]
    if item.points:
        prompts["input_points"] = [[[[x, y] for x, y, _ in item.points]] * copies]
        prompts["input_labels"] = [[[int(foreground) for _, _, foreground in item.points]] * copies]
    return prompts


def segmenter(card: PromptableSegmentationCard, settings: Settings | None = None) -> PromptableSegmenter:
    """The card's segmenter: named after the card, its model card built from the card's fields."""
    settings = settings or Settings()
    summary = ("Segments what box or point prompts (image pixels) point at with a promptable segmenter (SAM); "
               "returns one mask per box with its area (mm² when the pixel spacing is known), a mask file and an "
               "overlay. Boxes from a detector or the lung localizer can be passed on as returned.")
    subclass = type(f"PromptableSegmenter_{card.name}", (PromptableSegmenter,),
                    {"name": card.name, "card": card.model_card(summary)})
    expert: PromptableSegmenter = subclass(card, device=settings.device,
                                           max_batch_size=card.max_batch_size or settings.max_batch_size,
                                           max_wait_ms=settings.max_batch_wait_ms)
    return expert


def tools(card: PromptableSegmentationCard, settings: Settings) -> list[Tool[Any, Any]]:
    """``{name}_segment`` (box and point prompts), and the chained tool the card's ``box_source`` names."""
    from medagent.families.chain import chained_tool

    expert = segmenter(card, settings)
    name = f"{card.name}_segment"
    policy = ToolPolicy(timeout_s=card.timeout_s, max_concurrency=card.max_concurrency)

    async def run(arguments: SegmentInput, context: ToolContext) -> PromptedSegmentation:
        image = context.load_image(arguments.image_id)
        expert.card.check_image(image, name)  # before any prompt check or weights
        result = await expert(prompt_request(image, arguments.boxes, arguments.points, name))
        return await store_masks(result, image, arguments.image_id, context.artifacts, name)

    built: list[Tool[Any, Any]] = [Tool(name=name, card=expert.card, input_model=SegmentInput,
                                        output_model=PromptedSegmentation, run=run, policy=policy,
                                        ready=expert.ready, close=expert.close)]
    if card.box_source is not None:
        built.append(chained_tool(card, expert, settings, policy))
    return built
