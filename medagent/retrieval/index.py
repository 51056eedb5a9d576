"""A persisted vector index: faiss vectors, SQLite documents, and a manifest written last.

Layout of an index folder::

    vectors.faiss       IndexIDMap2(IndexFlatIP): exact inner product on L2-normalised vectors = cosine
    documents.sqlite    one row per document; its row_id is the vector's id in the faiss index
    manifest.json       kind, embedder, count and the sha256 of both files above

A build first removes the old manifest, then writes each data file to a temporary file in
the folder and ``os.replace``-s it into place, and writes the manifest last. A crash at
any point leaves either the previous complete index or a folder without a manifest, which
:meth:`VectorIndex.open` refuses; a manifest whose hashes do not match its files is refused too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Self

import numpy as np

from medagent.errors import ConfigurationError, MissingDependency
from medagent.files import private_dir
from medagent.retrieval.documents import (
    Document,
    DocumentKind,
    DocumentStore,
    EmbedderInfo,
    IndexManifest,
    write_documents,
)
from medagent.runtime.weights import sha256_file

VECTORS_FILE = "vectors.faiss"
DOCUMENTS_FILE = "documents.sqlite"
MANIFEST_FILE = "manifest.json"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependency("retrieval needs faiss: pip install 'medagent[experts]'") from exc
    return faiss


def _replace_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` fills a temporary file beside ``target``, which then replaces it in one rename."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        # sqlite and faiss open the empty 0600 file mkstemp made (keeping its mode) instead of creating one
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32, C-contiguous as faiss wants."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D array of vectors, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class VectorIndex:
    """An opened index: vectors in memory, documents read from SQLite on demand."""

    def __init__(self, directory: Path, manifest: IndexManifest, vectors: Any, store: DocumentStore) -> None:
        self.directory = directory
        self.manifest = manifest
        self._vectors = vectors
        self.store = store

    @staticmethod
    def exists(directory: Path) -> bool:
        return (Path(directory) / MANIFEST_FILE).is_file()

    @classmethod
    def build(cls, directory: Path, embedder: EmbedderInfo, documents: list[Document],
              vectors: np.ndarray) -> VectorIndex:
        """Write a complete index (replacing any index already there) and open it."""
        faiss = _faiss()
        directory = Path(directory)
        if len(documents) != len(vectors):
            raise ValueError(f"{len(documents)} documents but {len(vectors)} vectors")
        if len({d.doc_id for d in documents}) != len(documents):
            raise ConfigurationError("document ids must be unique within an index", reason="duplicate_doc_id")
        if any(d.kind != embedder.kind for d in documents):
            raise ConfigurationError(f"a {embedder.kind} index holds only {embedder.kind} documents",
                                     reason="kind_mismatch")
        matrix = normalised(vectors.reshape(len(documents), -1) if len(documents) else
                            np.zeros((0, embedder.dimension), np.float32))
        if matrix.shape[1] != embedder.dimension:
            raise ValueError(f"vectors have dimension {matrix.shape[1]}, the embedder says {embedder.dimension}")
        private_dir(directory)
        (directory / MANIFEST_FILE).unlink(missing_ok=True)  # from here on the folder reads as incomplete
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(embedder.dimension))
        row_ids = np.arange(len(documents), dtype=np.int64)
        if len(documents):
            index.add_with_ids(matrix, row_ids)
        _replace_atomically(directory / VECTORS_FILE, lambda path: faiss.write_index(index, str(path)))
        _replace_atomically(directory / DOCUMENTS_FILE,
                            lambda path: write_documents(path, zip(row_ids.tolist(), documents, strict=True)))
        manifest = IndexManifest(kind=embedder.kind, embedder=embedder, count=len(documents),
                                 vectors_sha256=sha256_file(directory / VECTORS_FILE),
                                 documents_sha256=sha256_file(directory / DOCUMENTS_FILE))
        _replace_atomically(directory / MANIFEST_FILE,
                            lambda path: path.write_text(manifest.model_dump_json(indent=2), encoding="utf-8"))
        return cls.open(directory)

    @classmethod
    def open(cls, directory: Path, expected: EmbedderInfo | None = None) -> VectorIndex:
        """Open a complete index; with ``expected``, refuse one built by a different embedder."""
        faiss = _faiss()
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ConfigurationError(
                f"no complete index in the folder given: {MANIFEST_FILE} is missing (never built, or a build was "
                "interrupted); run `medagent index build`", reason="missing_manifest")
        manifest = IndexManifest.model_validate_json(manifest_path.read_bytes())
        if expected is not None:
            problem = manifest.embedder.incompatibility(expected)
            if problem is not None:
                raise ConfigurationError(
                    f"this index was built with embedder {manifest.embedder.name} ({manifest.embedder.model_id}); "
                    f"it cannot be queried with {expected.name} ({expected.model_id}): {problem}",
                    reason="embedder_mismatch", index_embedder=manifest.embedder.name, query_embedder=expected.name)
        for file_name, recorded in ((VECTORS_FILE, manifest.vectors_sha256),
                                    (DOCUMENTS_FILE, manifest.documents_sha256)):
            path = directory / file_name
            if not path.is_file() or sha256_file(path) != recorded:
                raise ConfigurationError(f"index file {file_name} is missing or does not match the manifest; "
                                         "rebuild the index", reason="inconsistent_index", file_name=file_name)
        vectors = faiss.read_index(str(directory / VECTORS_FILE))
        store = DocumentStore(directory / DOCUMENTS_FILE)
        if vectors.ntotal != manifest.count or store.count() != manifest.count:
            store.close()
            raise ConfigurationError("index files disagree on the number of documents; rebuild the index",
                                     reason="inconsistent_index")
        return cls(directory, manifest, vectors, store)

    @property
    def kind(self) -> DocumentKind:
        return self.manifest.kind

    def __len__(self) -> int:
        return self.manifest.count

    def search(self, vector: np.ndarray, k: int,
               exclude_rows: AbstractSet[int] = frozenset()) -> list[tuple[int, float]]:
        """The ``k`` most similar ``(row_id, cosine)`` pairs, best first, skipping ``exclude_rows``."""
        query = normalised(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if query.shape[1] != self.manifest.embedder.dimension:
            raise ValueError(f"query has dimension {query.shape[1]}, the index {self.manifest.embedder.dimension}")
        wanted = min(len(self), k + len(exclude_rows))
        if wanted <= 0:
            return []
        scores, ids = self._vectors.search(query, wanted)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and i not in exclude_rows]
        return pairs[:k]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
