"""The ``compare_studies`` tool: prior vs current image of one patient."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from medagent.errors import InvalidToolArguments, MedagentError
from medagent.experts.cxr_classifier import Classification, CxrClassifier
from medagent.experts.temporal import Comparison, StudyDifferencer, combine
from medagent.tools.artifacts import ArtifactKind
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy


class CompareInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prior_image_id: ImageId = Field(description="the earlier image")
    current_image_id: ImageId = Field(description="the later image of the same patient")


def compare_studies_tool(differencer: StudyDifferencer, classifier: CxrClassifier) -> Tool[CompareInput, Comparison]:
    async def run(arguments: CompareInput, context: ToolContext) -> Comparison:
        if arguments.prior_image_id == arguments.current_image_id:
            raise InvalidToolArguments("prior_image_id and current_image_id name the same image; pass two images")
        prior = context.load_image(arguments.prior_image_id)
        current = context.load_image(arguments.current_image_id)
        change_task = asyncio.ensure_future(differencer((prior, current)))
        scores: tuple[Classification, Classification] | None = None
        suits_classifier = all(classifier.card.mismatch(r.modality, r.ndim, r.source_format, r.metadata.body_part,
                                                        classifier.name) is None for r in (prior, current))
        if classifier.ready() and suits_classifier:
            try:
                prior_scores, current_scores = await asyncio.gather(classifier(prior), classifier(current))
                scores = (prior_scores, current_scores)
            except MedagentError:
                scores = None  # the image comparison still stands; findings_compared says what is missing
        change = await change_task
        pair: tuple[Classification | None, Classification | None] = scores or (None, None)
        comparison = combine(change, pair[0], pair[1], differencer.thresholds)
        overlay = context.artifacts.put_png(
            differencer.overlay_png(change), ArtifactKind.OVERLAY,
            metadata={"source": arguments.current_image_id, "prior": arguments.prior_image_id,
                      "shows": "difference map (current vs registered prior)"},
            provenance=change.provenance.model_dump(),
        )
        return comparison.model_copy(update={"overlay_id": overlay.id})

    return Tool(name="compare_studies", card=differencer.card, input_model=CompareInput, output_model=Comparison,
                run=run, policy=ToolPolicy(timeout_s=120, max_concurrency=2), ready=differencer.ready)
