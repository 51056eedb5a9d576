"""Image embedders: a weightless classical descriptor (the default) and a RAD-DINO encoder slot."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from medagent.errors import MissingDependency, WeightsUnavailable
from medagent.imaging.record import ImageRecord
from medagent.retrieval.documents import EmbedderInfo
from medagent.runtime.cache import ModelCache, shared_cache, torch_module_bytes
from medagent.runtime.expert import pick_device
from medagent.runtime.results import Provenance
from medagent.runtime.weights import WeightsFile, sha256_file

_THUMB_SIDE, _HIST_BINS, _HOG_SIDE = 32, 32, 64
# Share of the squared norm each part gets: cosine = 0.5 cos(thumb) + 0.35 cos(HOG) + 0.15 cos(histogram).
_PART_WEIGHTS = {"thumbnail": 0.5, "hog": 0.35, "histogram": 0.15}


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class ClassicalImageEmbedder:
    """A fixed, weightless descriptor of how an image looks; NOT a semantic embedding.

    Built from the 2D display view (middle slice of a volume) in three L2-normalised parts:

    * a 32x32 thumbnail of the histogram-equalised image, mean-removed: global layout and
      brightness pattern (where the bright and dark regions are);
    * HOG (9 orientations, 8-pixel cells, 16-pixel blocks) of a 64x64 equalised copy: edge
      directions per region (outlines of lungs, heart, skull, bowel);
    * a 32-bin intensity histogram of the display image (Hellinger, square-rooted): contrast
      and exposure, independent of layout.

    Near duplicates, crops and re-exports of an image, and images of the same modality and
    view, score high. It knows nothing of findings: two chest X-rays score high whether or
    not either shows disease, and it is not invariant to flips or large rotations.
    """

    name = "classical-thumb32-hog-hist"
    model_id = "medagent/classical-image-descriptor-v1"

    def __init__(self) -> None:
        import cv2

        # OpenCV's HOG object is not documented as thread-safe; one per embedder, used under a lock.
        self._hog = cv2.HOGDescriptor((_HOG_SIDE, _HOG_SIDE), (16, 16), (16, 16), (8, 8), 9)
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return _THUMB_SIDE * _THUMB_SIDE + int(self._hog.getDescriptorSize()) + _HIST_BINS

    def ready(self) -> bool:
        return True

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(name=self.name, kind="image", dimension=self.dimension, model_id=self.model_id)

    def provenance(self) -> Provenance:
        import cv2

        return Provenance(expert="image_retriever", model_id=self.model_id, device="cpu",
                          library_versions={"opencv": cv2.__version__})

    def describe(self, record: ImageRecord) -> np.ndarray:
        import cv2

        view = np.nan_to_num(record.as_2d(), nan=0.0)
        histogram = np.histogram(view, bins=_HIST_BINS, range=(0.0, 1.0))[0].astype(np.float32)
        histogram = _unit(np.sqrt(histogram / max(float(histogram.sum()), 1.0)))
        equalised = cv2.equalizeHist((np.clip(view, 0.0, 1.0) * 255.0).round().astype(np.uint8))
        thumbnail = cv2.resize(equalised, (_THUMB_SIDE, _THUMB_SIDE), interpolation=cv2.INTER_AREA)
        thumbnail = thumbnail.astype(np.float32).ravel()
        thumbnail = _unit(thumbnail - thumbnail.mean())
        with self._lock:
            gradients = self._hog.compute(cv2.resize(equalised, (_HOG_SIDE, _HOG_SIDE), interpolation=cv2.INTER_AREA))
        hog = _unit(np.asarray(gradients, dtype=np.float32).ravel())
        parts = [np.sqrt(_PART_WEIGHTS["thumbnail"]) * thumbnail, np.sqrt(_PART_WEIGHTS["hog"]) * hog,
                 np.sqrt(_PART_WEIGHTS["histogram"]) * histogram]
        return _unit(np.concatenate(parts)).astype(np.float32)

    def embed(self, images: list[ImageRecord]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.describe(record) for record in images]).astype(np.float32)


RAD_DINO_MODEL_ID = "microsoft/rad-dino"
RAD_DINO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


class RadDinoImageEmbedder:
    """A DINOv2-style encoder read from a local folder in the ``microsoft/rad-dino`` layout.

    The folder holds ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``
    as the publisher names them; the embedding is the CLS token (the model's pooler output),
    L2-normalised. Nothing is downloaded: a missing file raises WeightsUnavailable.
    """

    name = "rad-dino"

    def __init__(self, folder: Path, *, model_id: str = RAD_DINO_MODEL_ID, device: str | None = None,
                 cache: ModelCache | None = None, batch_size: int = 8) -> None:
        self.folder = Path(folder).expanduser()
        self.model_id = model_id
        self._requested_device = device
        self._cache = cache
        self.batch_size = batch_size

    def _files(self) -> dict[str, Path]:
        """Every file of the layout; WeightsUnavailable names the folder and each file missing from it."""
        url = f"https://huggingface.co/{self.model_id}/resolve/main/"
        specs = {name: WeightsFile(file_name=name, url=url + name) for name in RAD_DINO_FILES}
        missing = [name for name, spec in specs.items() if spec.locate([self.folder]) is None]
        if missing:
            try:
                specs[missing[0]].require([self.folder], self.name)
            except WeightsUnavailable as exc:  # one message naming every missing file, not just the first
                raise WeightsUnavailable(
                    f"{self.name}: {', '.join(missing)} not found in the encoder folder {self.folder}. Put the files "
                    f"of {self.model_id} ({', '.join(RAD_DINO_FILES)}) there; a connected machine can download them "
                    f"from {url} .", **{**exc.details, "missing_files": missing, "folder": str(self.folder)},
                ) from None
        return {name: spec.require([self.folder], self.name) for name, spec in specs.items()}

    @property
    def device(self) -> str:
        return pick_device(self._requested_device)

    @property
    def dimension(self) -> int:
        import json

        return int(json.loads(self._files()["config.json"].read_text(encoding="utf-8"))["hidden_size"])

    def ready(self) -> bool:
        return all((self.folder / name).is_file() for name in RAD_DINO_FILES)

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(name=self.name, kind="image", dimension=self.dimension, model_id=self.model_id,
                            weights_sha256=sha256_file(self._files()["model.safetensors"]))

    def provenance(self) -> Provenance:
        import torch
        import transformers

        return Provenance(expert="image_retriever", model_id=self.model_id,
                          weights_sha256=sha256_file(self._files()["model.safetensors"]), device=self.device,
                          library_versions={"transformers": transformers.__version__, "torch": torch.__version__})

    def _load(self, device: str) -> dict[str, Any]:
        self._files()
        try:
            from transformers import AutoImageProcessor, AutoModel
        except ImportError as exc:
            raise MissingDependency("the RAD-DINO embedder needs transformers (installed with sentence-transformers)"
                                    ) from exc
        model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(str(self.folder), local_files_only=True)
        return {"model": model, "processor": processor}

    def _loaded(self) -> dict[str, Any]:
        device = self.device
        cache = self._cache or shared_cache()
        return cache.get_or_load(f"image_embedder:{self.name}:{self.folder}:{device}", lambda: self._load(device),
                                 lambda state: torch_module_bytes(state["model"]))

    def embed(self, images: list[ImageRecord]) -> np.ndarray:
        import torch
        from PIL import Image

        state, device = self._loaded(), self.device
        rows = []
        for start in range(0, len(images), self.batch_size):
            pictures = [Image.fromarray((np.clip(r.as_2d(), 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
                        for r in images[start:start + self.batch_size]]
            inputs = state["processor"](images=pictures, return_tensors="pt").to(device)
            with torch.inference_mode():
                outputs = state["model"](**inputs)
            pooled = getattr(outputs, "pooler_output", None)
            cls = pooled if pooled is not None else outputs.last_hidden_state[:, 0]
            rows.append(torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy())
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
