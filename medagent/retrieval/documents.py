"""What an index holds: documents (SQLite), the embedder that made its vectors, and its manifest."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

DocumentKind = Literal["text", "image"]

_SCHEMA = """
CREATE TABLE documents (
    row_id INTEGER PRIMARY KEY,      -- the vector's id in the faiss index
    doc_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    license TEXT NOT NULL,
    text TEXT,                       -- the text of a text document, the report of an image
    labels TEXT NOT NULL,            -- JSON list of strings
    record_key TEXT,                 -- patient/record key, for self-exclusion
    source_sha256 TEXT
);
CREATE INDEX documents_record_key ON documents(record_key);
CREATE INDEX documents_source_sha256 ON documents(source_sha256);
"""
_COLUMNS = "row_id, doc_id, kind, source, license, text, labels, record_key, source_sha256"


class Document(BaseModel):
    """One indexed item. Image documents keep no pixels and no file path, only what retrieval returns."""

    doc_id: str = Field(min_length=1, max_length=200)
    kind: DocumentKind
    source: str = Field(description="where the content comes from (a guideline, a data set), never a patient's path")
    license: str = Field(description="the licence the content is used under")
    text: str | None = Field(default=None, description="text of a text document; the report of an image, if any")
    labels: list[str] = Field(default_factory=list)
    record_key: str | None = Field(default=None, description="patient or record key: a query of the same record "
                                                             "excludes this document")
    source_sha256: str | None = Field(default=None, description="sha256 of the source bytes (image file or text)")


class EmbedderInfo(BaseModel):
    """Identifies the vector space: queries must be embedded by the same embedder as the index."""

    name: str
    kind: DocumentKind
    dimension: int = Field(gt=0)
    model_id: str
    weights_sha256: str | None = None

    def incompatibility(self, other: EmbedderInfo) -> str | None:
        """Why vectors from ``other`` cannot be compared with vectors from ``self`` (None when they can)."""
        for field in ("name", "kind", "dimension", "model_id"):
            if getattr(self, field) != getattr(other, field):
                return f"{field} differs: index {getattr(self, field)!r}, query {getattr(other, field)!r}"
        if self.weights_sha256 and other.weights_sha256 and self.weights_sha256 != other.weights_sha256:
            return "the embedder's weights file differs (sha256) from the one that built the index"
        return None


class IndexManifest(BaseModel):
    """Written last: an index folder without it is incomplete. Hashes bind it to the two data files."""

    format_version: int = 1
    kind: DocumentKind
    embedder: EmbedderInfo
    count: int = Field(ge=0)
    metric: str = "inner product of L2-normalised vectors (cosine similarity)"
    vectors_sha256: str
    documents_sha256: str
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))


def write_documents(path: Path, documents: Iterable[tuple[int, Document]]) -> int:
    """Create a fresh SQLite file at ``path`` holding ``(row_id, document)`` pairs; returns the count."""
    connection = sqlite3.connect(path)
    try:
        connection.executescript(_SCHEMA)
        rows = [(row_id, d.doc_id, d.kind, d.source, d.license, d.text, json.dumps(d.labels), d.record_key,
                 d.source_sha256) for row_id, d in documents]
        connection.executemany(f"INSERT INTO documents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        connection.commit()
    finally:
        connection.close()
    return len(rows)


def _document(row: tuple[object, ...]) -> Document:
    _, doc_id, kind, source, license_, text, labels, record_key, sha = row
    return Document(doc_id=doc_id, kind=kind, source=source, license=license_, text=text,
                    labels=json.loads(str(labels)), record_key=record_key, source_sha256=sha)


class DocumentStore:
    """Read-only view of ``documents.sqlite``.

    The connection stays open: should the index be rebuilt (files replaced) while this store
    is open, it keeps reading the file it opened, which matches the vectors loaded beside it.
    """

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            return int(self._connection.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def by_rows(self, row_ids: list[int]) -> dict[int, Document]:
        if not row_ids:
            return {}
        marks = ", ".join("?" * len(row_ids))
        with self._lock:
            rows = self._connection.execute(f"SELECT {_COLUMNS} FROM documents WHERE row_id IN ({marks})",
                                            row_ids).fetchall()
        return {int(row[0]): _document(row) for row in rows}

    def matching_rows(self, doc_ids: Iterable[str] = (), record_keys: Iterable[str] = (),
                      sha256s: Iterable[str] = ()) -> set[int]:
        """Rows whose doc id, record key or source sha256 is among those given (for self-exclusion)."""
        found: set[int] = set()
        with self._lock:
            for column, values in (("doc_id", doc_ids), ("record_key", record_keys), ("source_sha256", sha256s)):
                values = [v for v in values if v]
                if values:
                    marks = ", ".join("?" * len(values))
                    query = f"SELECT row_id FROM documents WHERE {column} IN ({marks})"
                    found.update(int(r[0]) for r in self._connection.execute(query, values))
        return found

    def all(self) -> list[Document]:
        with self._lock:
            rows = self._connection.execute(f"SELECT {_COLUMNS} FROM documents ORDER BY row_id").fetchall()
        return [_document(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
