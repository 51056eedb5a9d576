"""Building indexes from corpora: embed in batches, then write the index in one atomic step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from medagent.errors import ConfigurationError, ImageInputError
from medagent.imaging.loader import ImageLoader
from medagent.imaging.record import ImageRecord
from medagent.retrieval.corpus import ImageEntry
from medagent.retrieval.documents import Document, DocumentKind, EmbedderInfo
from medagent.retrieval.embedders import ImageEmbedder, TextEmbedder
from medagent.retrieval.index import VectorIndex

Progress = Callable[[int], None]  # called with the number of items just processed


class SkippedItem(BaseModel):
    position: int = Field(description="1-based position of the item in the corpus")
    code: str = Field(description="the error code; no path or content, which may identify a patient")


class BuildReport(BaseModel):
    index_dir: str
    kind: DocumentKind
    embedder: EmbedderInfo
    indexed: int
    skipped: list[SkippedItem] = Field(default_factory=list)
    duplicates: int = Field(default=0, description="items whose source sha256 was already indexed")


def build_text_index(documents: list[Document], embedder: TextEmbedder, out: Path, *, batch_size: int = 32,
                     progress: Progress | None = None) -> BuildReport:
    info = embedder.info()
    vectors = []
    for start in range(0, len(documents), batch_size):
        batch = documents[start:start + batch_size]
        vectors.append(embedder.embed([d.text or "" for d in batch]))
        if progress:
            progress(len(batch))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, info.dimension), np.float32)
    with VectorIndex.build(out, info, documents, matrix) as index:
        return BuildReport(index_dir=str(index.directory), kind="text", embedder=info, indexed=len(index))


def _image_document(entry: ImageEntry, record: ImageRecord, source: str, license: str) -> Document:
    return Document(doc_id=entry.doc_id or f"img-{record.source_sha256[:12]}", kind="image",
                    source=entry.source or source, license=entry.license or license, text=entry.report,
                    labels=entry.labels, record_key=entry.record, source_sha256=record.source_sha256)


def build_image_index(entries: list[ImageEntry], loader: ImageLoader, embedder: ImageEmbedder, out: Path, *,
                      source: str, license: str, modality: str | None = None, batch_size: int = 16,
                      progress: Progress | None = None) -> BuildReport:
    """Load each image through medagent's loader (limits, de-identification), embed, index.

    An unreadable image is skipped and reported by position and error code; an image whose
    bytes were already indexed is counted as a duplicate and skipped.
    """
    info = embedder.info()
    documents: list[Document] = []
    vectors: list[np.ndarray] = []
    skipped: list[SkippedItem] = []
    seen: set[str] = set()
    duplicates = 0
    pending: list[tuple[ImageEntry, ImageRecord]] = []

    def flush() -> None:
        if pending:
            vectors.append(embedder.embed([record for _, record in pending]))
            documents.extend(_image_document(entry, record, source, license) for entry, record in pending)
            pending.clear()

    for position, entry in enumerate(entries, start=1):
        try:
            record = loader.load(entry.path, modality=entry.modality or modality)
        except ImageInputError as exc:
            skipped.append(SkippedItem(position=position, code=exc.code))
        else:
            if record.source_sha256 in seen:
                duplicates += 1
            else:
                seen.add(record.source_sha256)
                pending.append((entry, record))
        if len(pending) >= batch_size:
            flush()
        if progress:
            progress(1)
    flush()
    if not documents:
        raise ConfigurationError("no image of the corpus could be indexed", reason="empty_corpus",
                                 skipped=[s.model_dump() for s in skipped])
    with VectorIndex.build(out, info, documents, np.concatenate(vectors)) as index:
        return BuildReport(index_dir=str(index.directory), kind="image", embedder=info, indexed=len(index),
                           skipped=skipped, duplicates=duplicates)
