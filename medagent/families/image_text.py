"""Cross-modal retrieval with the image and text towers of a SigLIP/CLIP model: an image finds reports
(image -> text) and a text finds images (text -> image), beside the existing image -> image search.

An image-text index is a folder holding two ordinary retrieval indexes (:mod:`medagent.retrieval.index`):
``images/`` (image-tower vectors; each image's document carries its report) and ``reports/`` (text-tower
vectors of those reports; a report keeps its image's sha256 and record, so an image never finds its own report).
Both manifests name this encoder: querying them with another model is refused before any vector is compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.families.card import ImageTextCard
from medagent.families.clip_towers import Towers, load_towers, model_folder, provenance, towers_bytes
from medagent.imaging.loader import ImageLoader
from medagent.imaging.record import ImageRecord
from medagent.retrieval.build import BuildReport, Progress, build_image_index, build_text_index
from medagent.retrieval.corpus import ImageEntry
from medagent.retrieval.documents import Document, DocumentKind, EmbedderInfo
from medagent.retrieval.index import VectorIndex
from medagent.retrieval.retriever import ImageRetriever, Retrieval, TextRetriever
from medagent.runtime.cache import ModelCache, shared_cache
from medagent.runtime.expert import pick_device
from medagent.runtime.results import Provenance
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy

IMAGES, REPORTS = "images", "reports"


class ImageTextEncoder:
    """The card's model, loaded once (shared model cache) and offered as a text and an image embedder."""

    def __init__(self, card: ImageTextCard, *, device: str | None = None, cache: ModelCache | None = None) -> None:
        self.card = card
        self.folder = model_folder(card, card.architecture, card.name)
        self._requested_device = device
        self._cache = cache
        self._sha256: str | None = None
        self._provenance: Provenance | None = None

    @property
    def device(self) -> str:
        return pick_device(self._requested_device)

    def towers(self) -> Towers:
        device = self.device
        return (self._cache or shared_cache()).get_or_load(
            f"image_text:{self.folder.path}:{device}", lambda: load_towers(self.folder, self.card.architecture, device),
            towers_bytes)

    def ready(self) -> bool:
        return not self.folder.missing()

    def info(self, kind: DocumentKind) -> EmbedderInfo:
        # the name says which architecture's space; model id and weights hash say which checkpoint
        return EmbedderInfo(name=f"{self.card.architecture}-image-text", kind=kind, dimension=self.towers().dimension,
                            model_id=self.card.model_id or self.folder.path.name, weights_sha256=self.weights_sha256())

    def weights_sha256(self) -> str:
        if self._sha256 is None:  # hashed once: a checkpoint may be gigabytes, and every search reports it
            self.folder.require()
            self._sha256 = self.folder.weights_sha256()
        return self._sha256

    def provenance(self) -> Provenance:
        if self._provenance is None:
            self._provenance = provenance(self.folder, self.towers(), self.device, sha256=self.weights_sha256())
        return self._provenance

    def tower(self, kind: DocumentKind) -> Tower:
        return Tower(self, kind)


class Tower:
    """One tower as a retrieval embedder (:class:`~medagent.retrieval.embedders.TextEmbedder` or ImageEmbedder)."""

    def __init__(self, encoder: ImageTextEncoder, kind: DocumentKind) -> None:
        self.encoder, self.kind = encoder, kind
        self.name = f"{encoder.card.architecture}-image-text"

    @property
    def dimension(self) -> int:
        return self.encoder.towers().dimension

    def info(self) -> EmbedderInfo:
        return self.encoder.info(self.kind)

    def provenance(self) -> Provenance:
        return self.encoder.provenance()

    def ready(self) -> bool:
        return self.encoder.ready()

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        towers = self.encoder.towers()
        return towers.texts(list(items)) if self.kind == "text" else towers.images(list(items))


class ReportsForImage(TextRetriever):
    """Image query -> the reports index (text-tower vectors). The query image's own report is left out."""

    query_kind = "image"  # type: ignore[assignment]  # the query crosses modality: an image into a text index

    def __init__(self, index_dir: Path, encoder: ImageTextEncoder) -> None:
        super().__init__(index_dir, encoder.tower("text"))
        self.encoder = encoder

    def search_image(self, image: ImageRecord, *, k_max: int | None = None) -> Retrieval:
        vector = self.encoder.tower("image").embed([image])[0]
        return self._retrieve(vector, k_max=k_max, sha256s=[image.source_sha256])


class ImagesForText(ImageRetriever):
    """Text query -> the images index (image-tower vectors), each image with its report."""

    query_kind = "text"  # type: ignore[assignment]  # a text into an image index

    def __init__(self, index_dir: Path, encoder: ImageTextEncoder) -> None:
        super().__init__(index_dir, encoder.tower("image"))
        self.encoder = encoder

    def search_text(self, text: str, *, k_max: int | None = None) -> Retrieval:
        return self._retrieve(self.encoder.tower("text").embed([text])[0], k_max=k_max)


def retrievers(encoder: ImageTextEncoder, index_dir: Path) -> tuple[ReportsForImage, ImagesForText]:
    return ReportsForImage(index_dir / REPORTS, encoder), ImagesForText(index_dir / IMAGES, encoder)


class ImageTextBuildReport(BaseModel):
    images: BuildReport
    reports: BuildReport


def build_image_text_index(entries: list[ImageEntry], loader: ImageLoader, encoder: ImageTextEncoder, out: Path, *,
                           source: str, license: str, modality: str | None = None, batch_size: int | None = None,
                           progress: Progress | None = None) -> ImageTextBuildReport:
    """Embed each image with the image tower and each image's report with the text tower; two indexes in ``out``.

    Images load through medagent's loader (limits, de-identification); unreadable ones are skipped and reported.
    """
    out = Path(out)
    batch_size = batch_size or encoder.card.max_batch_size or 16  # the card's batch size, where it names one
    images = build_image_index(entries, loader, encoder.tower("image"), out / IMAGES, source=source,
                               license=license, modality=modality, batch_size=batch_size, progress=progress)
    with VectorIndex.open(out / IMAGES) as index:
        reports = [Document(doc_id=d.doc_id, kind="text", source=d.source, license=d.license, text=d.text,
                            labels=d.labels, record_key=d.record_key, source_sha256=d.source_sha256)
                   for d in index.store.all() if d.text]
    return ImageTextBuildReport(images=images, reports=build_text_index(
        reports, encoder.tower("text"), out / REPORTS, batch_size=batch_size))


class ReportsForImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    k_max: int = Field(default=5, ge=1, le=20, description="most reports to return; fewer when similarity drops "
                                                           "sharply")


class ImagesForTextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=1000, description="a finding or description, in plain words")
    k_max: int = Field(default=5, ge=1, le=20, description="most images to return; fewer when similarity drops "
                                                           "sharply")


def index_dir(card: ImageTextCard, settings: Settings) -> Path:
    return Path(card.index).expanduser() if card.index else settings.home / "indexes" / card.name


def tools(card: ImageTextCard, settings: Settings) -> list[Tool[Any, Any]]:
    """``{name}_search_reports`` (image -> reports) and ``{name}_search_images`` (text -> images)."""
    encoder = ImageTextEncoder(card, device=settings.device)
    by_image, by_text = retrievers(encoder, index_dir(card, settings))
    policy = ToolPolicy(timeout_s=card.timeout_s, max_concurrency=card.max_concurrency)
    limits = ["neighbours are similar documents, not diagnoses", "only as good as the indexed collection",
              "reports are read through the text tower's token limit"]
    reports_card = card.model_card(
        f"Finds indexed reports whose text the {card.architecture} model places closest to an attached image "
        "(image -> text); returns each report shortened, with its source, licence and labels.")
    reports_card = reports_card.model_copy(update={"limitations": [*reports_card.limitations, *limits]})
    images_card = card.model_card(
        f"Finds indexed images that the {card.architecture} model places closest to a text (text -> image); returns "
        "their ids, labels and shortened reports.").model_copy(update={"modalities": None, "body_parts": None})

    async def search_reports(arguments: ReportsForImageInput, context: ToolContext) -> Retrieval:
        image = context.load_image(arguments.image_id)
        reports_card.check_image(image, f"{card.name}_search_reports")
        return await asyncio.to_thread(by_image.search_image, image, k_max=arguments.k_max)

    async def search_images(arguments: ImagesForTextInput, context: ToolContext) -> Retrieval:
        return await asyncio.to_thread(by_text.search_text, arguments.query, k_max=arguments.k_max)

    return [Tool(name=f"{card.name}_search_reports", card=reports_card, input_model=ReportsForImageInput,
                 output_model=Retrieval, run=search_reports, policy=policy, ready=by_image.ready, close=by_image.close),
            Tool(name=f"{card.name}_search_images", card=images_card, input_model=ImagesForTextInput,
                 output_model=Retrieval, run=search_images, policy=policy, ready=by_text.ready, close=by_text.close)]


def check_card(card: object) -> ImageTextCard:
    if not isinstance(card, ImageTextCard):
        raise ConfigurationError("an image-text index is built with an image_text_retrieval card",
                                 reason="wrong_family")
    return card
