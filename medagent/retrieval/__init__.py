"""Retrieval: persisted vector indexes of text and images, searched with adaptive k and self-exclusion.

Heavy libraries (faiss, sentence-transformers, transformers, OpenCV) load only when used.
"""

from medagent.retrieval.documents import Document, EmbedderInfo, IndexManifest
from medagent.retrieval.embedders import ImageEmbedder, MiniLmTextEmbedder, TextEmbedder
from medagent.retrieval.factory import image_embedder, open_retriever, read_manifest, text_embedder
from medagent.retrieval.image_embedders import ClassicalImageEmbedder, RadDinoImageEmbedder
from medagent.retrieval.index import VectorIndex
from medagent.retrieval.retriever import AdaptiveK, ImageRetriever, Retrieval, RetrievalHit, TextRetriever, label_votes

__all__ = [
    "AdaptiveK",
    "ClassicalImageEmbedder",
    "Document",
    "EmbedderInfo",
    "ImageEmbedder",
    "ImageRetriever",
    "IndexManifest",
    "MiniLmTextEmbedder",
    "RadDinoImageEmbedder",
    "Retrieval",
    "RetrievalHit",
    "TextEmbedder",
    "TextRetriever",
    "VectorIndex",
    "image_embedder",
    "label_votes",
    "open_retriever",
    "read_manifest",
    "text_embedder",
]
