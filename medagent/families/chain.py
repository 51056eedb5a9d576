"""Chained tools: boxes from the lung localizer or a detection card, turned into masks by a promptable segmenter.

A promptable segmentation card's ``box_source`` names where the boxes come from:

- ``lungs``: ``{name}_segment_lungs`` (image only) - lungs-finder's two lung boxes -> two masks ``Right Lung`` and
  ``Left Lung`` with their areas;
- a detection card file: ``{name}_segment_finding`` (image + phrase) - the detector's boxes for the phrase -> one
  mask per box, with the grounding that placed them.

Areas are in mm² from the image's real pixel spacing, exactly as the segmentation tools report them. The planner
can chain the parts itself too: ``{detector}_detect``, then ``{name}_segment`` with the boxes it returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.experts.grounding import Grounding
from medagent.experts.lungs import LungLocalizer
from medagent.experts.segmentation import LEFT_LUNG, RIGHT_LUNG
from medagent.families.card import DetectionCard, FamilyCardError, PromptableSegmentationCard, load_card
from medagent.families.detection import DetectInput, PhraseDetector, detect, detector
from medagent.families.promptable import PromptableSegmenter, PromptedSegmentation, PromptRequest, mask_label
from medagent.runtime.results import Provenance
from medagent.tools.plugin import ImageInput
from medagent.tools.segmentation_tools import store_masks
from medagent.tools.spec import Tool, ToolContext, ToolPolicy


def detection_card(path: Path, settings: Settings, owner: str) -> DetectionCard:
    """The detection card a segmentation card's ``box_source`` names, held to the same test-weights rule."""
    found = load_card(path)
    if not isinstance(found, DetectionCard):
        raise FamilyCardError(f"{owner}: box_source must name a detection card (this one is {found.family})",
                              file=owner, field="box_source")
    if found.untrained_test_only and not settings.allow_untrained_test_only:
        raise FamilyCardError(f"{owner}: the box_source card {found.name} has untrained_test_only, which needs "
                              "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY=1", file=owner, field="box_source")
    return found


def _both(first: list[Any] | None, second: list[Any] | None) -> list[Any] | None:
    """What two cards both accept (None accepts anything)."""
    if first is None or second is None:
        return second if first is None else first
    return [value for value in first if value in second]


def joined_card(segmenter: ModelCard, source: ModelCard, summary: str) -> ModelCard:
    """The chained tool's card: only images both parts accept, both parts' limitations."""
    return ModelCard(summary=summary, modalities=_both(segmenter.modalities, source.modalities),
                     body_parts=_both(segmenter.body_parts, source.body_parts),
                     dimensionality=[d for d in segmenter.dimensionality if d in source.dimensionality],
                     limitations=[*source.limitations, *segmenter.limitations],
                     references=[*source.references, *segmenter.references])


def _marked(provenance: Provenance, source: Provenance) -> Provenance:
    """The segmenter's provenance, untrained (and claiming no weights hash) when the boxes came from random weights."""
    if source.untrained and not provenance.untrained:
        return provenance.model_copy(update={"untrained": True, "weights_sha256": None})
    return provenance


def _lungs_tool(card: PromptableSegmentationCard, expert: PromptableSegmenter,
                policy: ToolPolicy) -> Tool[ImageInput, PromptedSegmentation]:
    lungs = LungLocalizer()
    name = f"{card.name}_segment_lungs"
    tool_card = joined_card(expert.card, lungs.card, (
        "Outlines both lungs on a frontal chest X-ray: the lung localizer's boxes prompt a promptable segmenter "
        "(SAM); returns the Right Lung and Left Lung masks with their areas (mm² when the pixel spacing is "
        "known), a mask file and an overlay."))

    async def run(arguments: ImageInput, context: ToolContext) -> PromptedSegmentation:
        image = context.load_image(arguments.image_id)
        tool_card.check_image(image, name)  # before either model is needed
        located = await lungs(image)
        boxes = tuple((RIGHT_LUNG if lung.side == "right" else LEFT_LUNG,
                       (lung.box.x0, lung.box.y0, lung.box.x1, lung.box.y1))
                      for lung in located.lungs if lung.box.x1 > lung.box.x0 and lung.box.y1 > lung.box.y0)
        result = await expert(PromptRequest(image, boxes))
        methods = ", ".join(f"{lung.side} {lung.method}" for lung in located.lungs)
        result = result.model_copy(update={"note": f"Prompt boxes from the lung localizer ({methods})."})
        return await store_masks(result, image, arguments.image_id, context.artifacts, name)

    def close() -> None:
        expert.close()
        lungs.close()

    return Tool(name=name, card=tool_card, input_model=ImageInput, output_model=PromptedSegmentation, run=run,
                policy=policy, ready=lambda: expert.ready() and lungs.ready(), close=close)


def _finding_tool(card: PromptableSegmentationCard, expert: PromptableSegmenter, finder: PhraseDetector,
                  policy: ToolPolicy) -> Tool[DetectInput, PromptedSegmentation]:
    name = f"{card.name}_segment_finding"
    tool_card = joined_card(expert.card, finder.card, (
        f"Outlines what a phrase describes: the detector {finder.name} finds boxes for the phrase and a promptable "
        "segmenter (SAM) turns each box into a mask; returns the masks with their areas (mm² when the pixel "
        "spacing is known), the boxes with their scores, a mask file and an overlay."))

    async def run(arguments: DetectInput, context: ToolContext) -> PromptedSegmentation:
        image = context.load_image(arguments.image_id)
        tool_card.check_image(image, name)  # before either model is needed
        grounding: Grounding = await detect(finder, image, arguments.phrase)
        if not grounding.regions:  # nothing to prompt with: say so rather than segment nothing
            return PromptedSegmentation.from_masks(  # type: ignore[return-value]
                {}, image, grounding.provenance, segmenter=f"{expert.name} (not run)", grounding=grounding,
                note="The detector found no box for the phrase, so nothing was segmented.")
        taken: set[str] = set()
        boxes = tuple((mask_label(region.label, taken), (region.box.x0, region.box.y0, region.box.x1, region.box.y1))
                      for region in grounding.regions)
        result = await expert(PromptRequest(image, boxes))
        result = result.model_copy(update={"grounding": grounding,
                                           "provenance": _marked(result.provenance, grounding.provenance)})
        return await store_masks(result, image, arguments.image_id, context.artifacts, name)

    def close() -> None:
        expert.close()
        finder.close()

    return Tool(name=name, card=tool_card, input_model=DetectInput, output_model=PromptedSegmentation, run=run,
                policy=policy, ready=lambda: expert.ready() and finder.ready(), close=close)


def chained_tool(card: PromptableSegmentationCard, expert: PromptableSegmenter, settings: Settings,
                 policy: ToolPolicy) -> Tool[Any, PromptedSegmentation]:
    """The tool ``card.box_source`` names (see the module docstring)."""
    if card.box_source == "lungs":
        return _lungs_tool(card, expert, policy)
    assert isinstance(card.box_source, Path)
    finder = detector(detection_card(card.box_source, settings, card.name), settings)
    return _finding_tool(card, expert, finder, policy)
