"""Retrievers: text -> documents, image -> images (and their reports), with adaptive k and self-exclusion."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, Field, model_validator

from medagent.imaging.record import ImageRecord
from medagent.retrieval.documents import Document, DocumentKind
from medagent.retrieval.embedders import ImageEmbedder, TextEmbedder
from medagent.retrieval.index import VectorIndex
from medagent.runtime.results import ExpertResult

SNIPPET_CHARS = 400
_TIE = 1e-6  # drops closer than this count as equal (float noise in cosine similarities)


class AdaptiveK(BaseModel):
    """How many neighbours to keep, chosen from the similarities themselves (after MMed-RAG).

    Rule, on the candidates' cosine similarities s1 >= s2 >= ... (at most ``k_max`` of them, n in all):

    1. if n <= ``k_min``, keep all n;
    2. otherwise look at the drops d(k) = s(k) - s(k+1) for every cut k in [k_min, n-1];
    3. if the largest drop is at least ``min_gap``, keep k = the smallest cut with that largest drop
       (drops within 1e-6 count as equal), i.e. the neighbours before the biggest fall in similarity;
    4. else (no clear break) keep all n.
    """

    k_min: int = Field(default=1, ge=1)
    k_max: int = Field(default=8, ge=1, le=100)
    min_gap: float = Field(default=0.05, ge=0.0, description="smallest drop in cosine that counts as a break")

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveK:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self

    def choose(self, similarities: Sequence[float]) -> int:
        scores = [float(s) for s in similarities][: self.k_max]
        if any(a < b for a, b in itertools.pairwise(scores)):
            raise ValueError("similarities must be sorted from most to least similar")
        n = len(scores)
        if n <= self.k_min:
            return n
        drops = {k: scores[k - 1] - scores[k] for k in range(self.k_min, n)}
        largest = max(drops.values())
        if largest < self.min_gap:
            return n
        return min(k for k, drop in drops.items() if largest - drop <= _TIE)


class RetrievalHit(BaseModel):
    doc_id: str
    kind: DocumentKind
    score: float = Field(description="cosine similarity to the query, in [-1, 1]")
    source: str
    license: str
    snippet: str | None = Field(default=None, description="the document's text, or the image's report, shortened")
    labels: list[str] = Field(default_factory=list)


class Retrieval(ExpertResult):
    query_kind: Literal["text", "image"]
    index_kind: DocumentKind
    hits: list[RetrievalHit]
    k_chosen: int
    k_max: int
    neighbour_label_scores: dict[str, float] = Field(
        default_factory=dict,
        description="per label: sum of the positive similarities of the hits carrying it over the sum for all hits",
    )
    excluded_self: bool = Field(description="True when documents of the query's own record were left out")
    note: str = ("Neighbours are similar documents, not diagnoses; label scores are similarity-weighted votes of "
                 "the neighbours' labels.")

    def summary_text(self) -> str:
        if not self.hits:
            return f"No {self.index_kind} documents were found for this {self.query_kind} query."
        top = "; ".join(f"{h.doc_id} ({h.score:.2f}, {h.source})" for h in self.hits[:3])
        labels = ", ".join(f"{label} {score:.2f}" for label, score in list(self.neighbour_label_scores.items())[:4])
        own = " The query's own record was left out." if self.excluded_self else ""
        return (f"{self.k_chosen} similar {self.index_kind} documents (adaptive k, at most {self.k_max}): {top}."
                + (f" Neighbour labels: {labels}." if labels else "") + own)


def label_votes(hits: Sequence[RetrievalHit]) -> dict[str, float]:
    """score(label) = sum of max(s, 0) over hits with the label / sum of max(s, 0) over all hits, high first."""
    total = sum(max(h.score, 0.0) for h in hits)
    if total <= 0:
        return {}
    votes: dict[str, float] = {}
    for hit in hits:
        for label in dict.fromkeys(hit.labels):
            votes[label] = votes.get(label, 0.0) + max(hit.score, 0.0) / total
    return {label: round(score, 4) for label, score in sorted(votes.items(), key=lambda item: (-item[1], item[0]))}


def _snippet(text: str | None) -> str | None:
    if text is None or len(text) <= SNIPPET_CHARS:
        return text
    return text[: SNIPPET_CHARS - 1].rstrip() + "\u2026"


class _Retriever:
    """A persisted index and the embedder whose vector space it lives in. The index opens on first use."""

    query_kind: Literal["text", "image"]

    def __init__(self, index_dir: Path, embedder: TextEmbedder | ImageEmbedder, *,
                 adaptive: AdaptiveK | None = None) -> None:
        self.index_dir = Path(index_dir).expanduser()
        self.embedder = embedder
        self.adaptive = adaptive or AdaptiveK()
        self._index: VectorIndex | None = None
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """An index is on disk and the embedder's files are present (nothing is loaded)."""
        return VectorIndex.exists(self.index_dir) and self.embedder.ready()

    @property
    def index(self) -> VectorIndex:
        with self._lock:
            if self._index is None:
                # refuses an index built by another embedder before any vector is compared
                self._index = VectorIndex.open(self.index_dir, expected=self.embedder.info())
            return self._index

    def _retrieve(self, vector: np.ndarray, *, k_max: int | None, doc_ids: Sequence[str] = (),
                  record_keys: Sequence[str] = (), sha256s: Sequence[str] = ()) -> Retrieval:
        index = self.index
        rule = self.adaptive if k_max is None else self.adaptive.model_copy(
            update={"k_max": k_max, "k_min": min(self.adaptive.k_min, k_max)})
        excluded = index.store.matching_rows(doc_ids, record_keys, sha256s)
        candidates = index.search(vector, rule.k_max, excluded)
        k = rule.choose([score for _, score in candidates])
        documents: dict[int, Document] = index.store.by_rows([row for row, _ in candidates[:k]])
        hits = [RetrievalHit(doc_id=documents[row].doc_id, kind=documents[row].kind, score=round(score, 6),
                             source=documents[row].source, license=documents[row].license,
                             snippet=_snippet(documents[row].text), labels=documents[row].labels)
                for row, score in candidates[:k]]
        return Retrieval(provenance=self.embedder.provenance(), query_kind=self.query_kind, index_kind=index.kind,
                         hits=hits, k_chosen=k, k_max=rule.k_max, neighbour_label_scores=label_votes(hits),
                         excluded_self=bool(excluded))

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextRetriever(_Retriever):
    """Text query -> the most similar documents of a text index."""

    query_kind = "text"
    embedder: TextEmbedder

    def __init__(self, index_dir: Path, embedder: TextEmbedder, *, adaptive: AdaptiveK | None = None) -> None:
        super().__init__(index_dir, embedder, adaptive=adaptive)

    def search(self, text: str, *, k_max: int | None = None, exclude_doc_ids: Sequence[str] = (),
               exclude_record_key: str | None = None) -> Retrieval:
        vector = self.embedder.embed([text])[0]
        return self._retrieve(vector, k_max=k_max, doc_ids=exclude_doc_ids,
                              record_keys=[exclude_record_key] if exclude_record_key else [])

    async def asearch(self, text: str, **options: object) -> Retrieval:
        return await asyncio.to_thread(self.search, text, **options)  # type: ignore[arg-type]


class ImageRetriever(_Retriever):
    """Image query -> the most similar images of an image index, each with its report when it has one.

    The query's own image (same source sha256) is always excluded; ``exclude_record_key``
    also excludes every image of the query's record (patient or study).
    """

    query_kind = "image"
    embedder: ImageEmbedder

    def __init__(self, index_dir: Path, embedder: ImageEmbedder, *, adaptive: AdaptiveK | None = None) -> None:
        super().__init__(index_dir, embedder, adaptive=adaptive)

    def search(self, image: ImageRecord, *, k_max: int | None = None, exclude_doc_ids: Sequence[str] = (),
               exclude_record_key: str | None = None) -> Retrieval:
        vector = self.embedder.embed([image])[0]
        return self._retrieve(vector, k_max=k_max, doc_ids=exclude_doc_ids,
                              record_keys=[exclude_record_key] if exclude_record_key else [],
                              sha256s=[image.source_sha256])

    async def asearch(self, image: ImageRecord, **options: object) -> Retrieval:
        return await asyncio.to_thread(self.search, image, **options)  # type: ignore[arg-type]
