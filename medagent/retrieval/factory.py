"""Open the right retriever for an index folder, from the embedder its manifest names."""

from __future__ import annotations

from pathlib import Path

from medagent.errors import ConfigurationError
from medagent.retrieval.documents import IndexManifest
from medagent.retrieval.embedders import ImageEmbedder, MiniLmTextEmbedder, TextEmbedder
from medagent.retrieval.image_embedders import ClassicalImageEmbedder, RadDinoImageEmbedder
from medagent.retrieval.index import MANIFEST_FILE, VectorIndex
from medagent.retrieval.retriever import AdaptiveK, ImageRetriever, TextRetriever

IMAGE_EMBEDDERS = ("classical", "rad-dino")


def read_manifest(index_dir: Path) -> IndexManifest:
    if not VectorIndex.exists(index_dir):
        raise ConfigurationError(f"no complete index in the folder given: {MANIFEST_FILE} is missing; "
                                 "run `medagent index build`", reason="missing_manifest")
    return IndexManifest.model_validate_json((Path(index_dir) / MANIFEST_FILE).read_bytes())


def image_embedder(choice: str = "classical", *, encoder_dir: Path | None = None,
                   device: str | None = None) -> ImageEmbedder:
    """``classical`` (weightless, the default) or ``rad-dino`` (needs ``encoder_dir``)."""
    if choice in ("classical", ClassicalImageEmbedder.name):
        return ClassicalImageEmbedder()
    if choice == RadDinoImageEmbedder.name:
        if encoder_dir is None:
            raise ConfigurationError("the rad-dino embedder needs the folder holding its files (--encoder-dir)",
                                     reason="missing_encoder_dir")
        return RadDinoImageEmbedder(encoder_dir, device=device)
    raise ConfigurationError(f"unknown image embedder {choice!r}; choose from {', '.join(IMAGE_EMBEDDERS)}",
                             reason="unknown_embedder")


def text_embedder(device: str | None = None) -> TextEmbedder:
    return MiniLmTextEmbedder(device=device)


def open_retriever(index_dir: Path, *, encoder_dir: Path | None = None, device: str | None = None,
                   adaptive: AdaptiveK | None = None) -> TextRetriever | ImageRetriever:
    """A retriever whose embedder matches the index's manifest (checked again when the index opens)."""
    manifest = read_manifest(index_dir)
    if manifest.kind == "text":
        if manifest.embedder.name != MiniLmTextEmbedder.name:
            raise ConfigurationError(f"text index built with unknown embedder {manifest.embedder.name!r}",
                                     reason="unknown_embedder")
        return TextRetriever(index_dir, text_embedder(device), adaptive=adaptive)
    embedder = image_embedder(manifest.embedder.name, encoder_dir=encoder_dir, device=device)
    return ImageRetriever(index_dir, embedder, adaptive=adaptive)
