"""The planner-facing grounding tool: a phrase on an image -> boxes, with heatmap and overlay artifacts."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medagent.cards import ModelCard
from medagent.experts.grounding import (
    PATHOLOGY_SYNONYMS,
    UNDERSTOOD_ANATOMY,
    AnatomyPhrase,
    Grounding,
    GroundingRequest,
    parse_phrase,
)
from medagent.experts.learned_grounder import LearnedGrounder
from medagent.experts.lung_phrases import LungPhraseGrounder
from medagent.experts.saliency import SaliencyGrounder, SaliencyMap
from medagent.imaging.heatmap import heatmap_overlay_png
from medagent.imaging.overlay import boxes_overlay_png
from medagent.imaging.record import ImageRecord, Modality
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy


class GroundPhraseInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    phrase: str = Field(min_length=1, max_length=200,
                        description="an anatomical lung phrase ('right lower zone') or a finding ('pleural effusion')")


GROUND_PHRASE_CARD = ModelCard(
    summary=(
        "Finds where a phrase lies on a frontal chest X-ray and returns boxes in image pixels. Lung anatomy "
        "('left lung', 'right lower zone', 'both lungs', 'left costophrenic angle', 'right hilum'; lobes map to "
        "zones) is placed from the detected lungs. Findings ('cardiomegaly', 'pleural effusion', ...) are placed "
        "by a learned grounding model when one is configured, otherwise by the classifier's Grad-CAM saliency "
        "map, whose boxes are saliency, not detections."
    ),
    modalities=[Modality.CR, Modality.DX],
    body_parts=["CHEST"],
    dimensionality=[2],
    valid_arguments={"phrase": [*UNDERSTOOD_ANATOMY, *sorted(PATHOLOGY_SYNONYMS)]},
    performance="Anatomy: lungs-finder boxes and zone thirds. Findings: Grad-CAM localises poorly (Saporta 2022).",
    limitations=[
        "frontal views only",
        "zones are thirds of the lung height, lobes only approximately",
        "saliency boxes show where the classifier looked, not a detected lesion",
    ],
    references=["https://arxiv.org/abs/1610.02391"],
)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _boxes(result: Grounding) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [(region.label, (region.box.x0, region.box.y0, region.box.x1, region.box.y1)) for region in result.regions]


def _store_overlay(store: ArtifactStore, png: bytes, image_id: str, result: Grounding) -> str:
    return store.put_png(png, ArtifactKind.OVERLAY,
                         metadata={"source": image_id, "shows": f"grounding of '{result.phrase}'",
                                   "method": result.method},
                         provenance=result.provenance.model_dump()).id


def _store_boxes_overlay(store: ArtifactStore, image: ImageRecord, image_id: str, result: Grounding) -> str:
    return _store_overlay(store, boxes_overlay_png(image.as_2d(), _boxes(result)), image_id, result)


def _store_saliency(store: ArtifactStore, image: ImageRecord, image_id: str, label: str,
                    saliency_map: SaliencyMap) -> tuple[str, str]:
    """(heatmap id, overlay id): the map as float16 .npy on the input grid, and its overlay PNG."""
    result = saliency_map.grounding
    heatmap = store.put_bytes(
        _npy_bytes(saliency_map.heatmap.astype(np.float16)), ArtifactKind.HEATMAP, "application/x-npy", ".npy",
        metadata={"source": image_id, "label": label, "shape": list(saliency_map.heatmap.shape),
                  "values": "Grad-CAM, 0-1 relative to its peak, input image pixel grid"},
        provenance=result.provenance.model_dump(),
    )
    overlay = heatmap_overlay_png(image.as_2d(), saliency_map.heatmap, _boxes(result))
    return heatmap.id, _store_overlay(store, overlay, image_id, result)


def grounding_tools(saliency: SaliencyGrounder, lung_phrases: LungPhraseGrounder,
                    learned: LearnedGrounder | None = None) -> list[Tool[GroundPhraseInput, Grounding]]:
    """``ground_phrase``: anatomy -> lung geometry; findings -> the learned grounder when ready, else Grad-CAM."""

    async def ground_finding(image: ImageRecord, phrase: str, label: str, image_id: str,
                             store: ArtifactStore) -> Grounding:
        request = GroundingRequest(record=image, phrase=phrase, label=label)
        if learned is not None and learned.ready():
            result = await learned(request)
            overlay_id = await asyncio.to_thread(_store_boxes_overlay, store, image, image_id, result)
            return result.model_copy(update={"overlay_id": overlay_id})
        saliency_map = await saliency(request)
        # encoding and writing full-size images takes a while on large radiographs: keep it off the event loop
        heatmap_id, overlay_id = await asyncio.to_thread(_store_saliency, store, image, image_id, label, saliency_map)
        return saliency_map.grounding.model_copy(update={"heatmap_id": heatmap_id, "overlay_id": overlay_id})

    async def run(arguments: GroundPhraseInput, context: ToolContext) -> Grounding:
        image = context.load_image(arguments.image_id)
        GROUND_PHRASE_CARD.check_image(image, "ground_phrase")  # before any model or phrase work
        parsed = parse_phrase(arguments.phrase)
        if isinstance(parsed, AnatomyPhrase):
            result = await lung_phrases.ground(image, parsed)
            result = result.model_copy(update={"phrase": arguments.phrase})
            overlay_id = await asyncio.to_thread(_store_boxes_overlay, context.artifacts, image, arguments.image_id,
                                                 result)
            return result.model_copy(update={"overlay_id": overlay_id})
        result = await ground_finding(image, arguments.phrase, parsed.label, arguments.image_id, context.artifacts)
        if parsed.qualifier:
            extra = (f"Words besides the finding ('{parsed.qualifier}') were not used to place the boxes.")
            result = result.model_copy(update={"note": f"{result.note or ''} {extra}".strip()})
        return result

    def ready() -> bool:
        # the anatomy path needs no weights, so the tool is useful even before any model is installed
        return lung_phrases.ready() or saliency.ready() or (learned is not None and learned.ready())

    return [Tool(name="ground_phrase", card=GROUND_PHRASE_CARD, input_model=GroundPhraseInput,
                 output_model=Grounding, run=run, policy=ToolPolicy(timeout_s=120, max_concurrency=2), ready=ready)]
