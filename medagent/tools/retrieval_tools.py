"""Tools ``search_reports`` (text -> documents) and ``find_similar_images`` (image -> images and reports)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medagent.cards import ModelCard
from medagent.retrieval.retriever import ImageRetriever, Retrieval, TextRetriever
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy


class SearchReportsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000, description="what to look for, in plain words")
    k_max: int = Field(default=5, ge=1, le=20, description="most documents to return; fewer when similarity "
                                                           "drops sharply")


class SimilarImagesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    k_max: int = Field(default=5, ge=1, le=20, description="most images to return; fewer when similarity "
                                                           "drops sharply")


SEARCH_CARD = ModelCard(
    summary=("Searches an indexed collection of guideline and report texts for passages similar in meaning to a "
             "query (all-MiniLM-L6-v2 sentence embeddings, cosine similarity); returns each passage with its "
             "source, licence and labels."),
    modalities=None,
    dimensionality=[2, 3, 4],
    performance="General-domain sentence embeddings; no medical retrieval benchmark run by medagent.",
    limitations=["finds similar wording and meaning, not verified facts",
                 "only as good as the indexed collection", "English text"],
    references=["https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"],
)

SIMILAR_IMAGES_CARD = ModelCard(
    summary=("Finds indexed images that look most like an attached image and returns them with their reports and "
             "labels, plus similarity-weighted votes of those labels. The image's own record is left out."),
    modalities=None,
    dimensionality=[2, 3, 4],
    performance="Default descriptor is classical (thumbnail, HOG, histogram): visual likeness, not findings.",
    limitations=["neighbours' labels are hints, not a diagnosis",
                 "with the default descriptor, similar layout and contrast rank high whatever the findings"],
    references=["https://arxiv.org/abs/2410.13085"],
)


def _search_tool(retriever: TextRetriever) -> Tool[SearchReportsInput, Retrieval]:
    async def run(arguments: SearchReportsInput, context: ToolContext) -> Retrieval:
        return await retriever.asearch(arguments.query, k_max=arguments.k_max)

    return Tool(name="search_reports", card=SEARCH_CARD, input_model=SearchReportsInput, output_model=Retrieval,
                run=run, policy=ToolPolicy(timeout_s=60, max_concurrency=4), ready=retriever.ready)


def _similar_images_tool(retriever: ImageRetriever) -> Tool[SimilarImagesInput, Retrieval]:
    async def run(arguments: SimilarImagesInput, context: ToolContext) -> Retrieval:
        image = context.load_image(arguments.image_id)
        # the attached image itself (same source sha256) is excluded by the retriever
        return await retriever.asearch(image, k_max=arguments.k_max)

    return Tool(name="find_similar_images", card=SIMILAR_IMAGES_CARD, input_model=SimilarImagesInput,
                output_model=Retrieval, run=run, policy=ToolPolicy(timeout_s=60, max_concurrency=4),
                ready=retriever.ready)


def retrieval_tools(text: TextRetriever | None, image: ImageRetriever | None) -> list[Tool[Any, Any]]:
    """The retrieval tools for the retrievers given; each is ready only once its index exists."""
    tools: list[Tool[Any, Any]] = []
    if text is not None:
        tools.append(_search_tool(text))
    if image is not None:
        tools.append(_similar_images_tool(image))
    return tools
