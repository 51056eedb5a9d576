"""The image and text towers of CLIP-style models from a local folder: transformers ``SiglipModel`` /
``CLIPModel``, or an open_clip folder in BiomedCLIP's layout (``open_clip_config.json`` beside
``open_clip_pytorch_model.bin`` or a safetensors file). Both embed into one space, L2-normalised.

Nothing is fetched: transformers reads local files only, and open_clip reads ``local-dir:`` with the Hub set offline.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medagent.errors import ConfigurationError, MissingDependency
from medagent.families.card import FolderCard
from medagent.families.folder import ModelFolder, model_bytes
from medagent.imaging.record import ImageRecord
from medagent.runtime.results import Provenance

Architecture = Literal["siglip", "clip", "open_clip"]
TRANSFORMERS_CLASSES = {"siglip": "SiglipModel", "clip": "CLIPModel"}
# open_clip's own preference among checkpoint names in a local folder (open_clip.factory._find_checkpoint_in_dir)
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")
TEXT_CHUNK = 256
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
OPEN_CLIP_LAYOUT = ["open_clip_config.json (model_cfg and preprocess_cfg)",
                    "open_clip_pytorch_model.bin (or open_clip_model.safetensors)",
                    "tokenizer files when text_cfg names an hf_tokenizer_name (BiomedCLIP)"]


class OpenClipFolder(ModelFolder):
    """An open_clip folder (BiomedCLIP's layout on the Hub) instead of a transformers one."""

    def __init__(self, card: FolderCard, expert: str, *, extra: tuple[str, ...] = ()) -> None:
        super().__init__(card, expert, layout=OPEN_CLIP_LAYOUT, required=("open_clip_config.json", *extra))

    def weight_file(self) -> Path | None:
        return next((self.path / name for name in OPEN_CLIP_WEIGHTS if (self.path / name).is_file()), None)

    def missing(self) -> list[str]:
        missing = [name for name in self.required if not (self.path / name).is_file()]
        if self.weight_file() is None:
            missing.append(f"{OPEN_CLIP_WEIGHTS[2]} (or {OPEN_CLIP_WEIGHTS[0]})")
        return missing


def model_folder(card: FolderCard, architecture: Architecture, expert: str, *,
                 extra: tuple[str, ...] = ()) -> ModelFolder:
    """The card's folder in its architecture's layout; ``extra``: more files the card names there."""
    if architecture == "open_clip":
        return OpenClipFolder(card, expert, extra=extra)
    return ModelFolder(card, expert, required=("config.json", *extra))


def to_rgb(record: ImageRecord) -> Any:
    """The record's 2D display view (middle slice of a volume) as the 8-bit RGB picture these models read."""
    from PIL import Image

    view = np.nan_to_num(record.as_2d(), nan=0.0)
    return Image.fromarray((np.clip(view, 0.0, 1.0) * 255.0).round().astype(np.uint8)).convert("RGB")


def _offline() -> None:
    """The Hub goes offline for good, as the text embedder sets it: open_clip resolves a text tower named in
    ``text_cfg.hf_model_name`` through the Hub otherwise. huggingface_hub reads its flag once, at import."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True


@dataclass
class Towers:
    """A loaded model's two encoders; each returns float32 unit rows, one per input, in one forward pass."""

    architecture: Architecture
    model: Any
    encode_images: Callable[[list[Any]], Any]  # PIL pictures -> torch tensor [n, dim]
    encode_texts: Callable[[list[str]], Any]  # strings -> torch tensor [n, dim]
    logit_scale: float
    logit_bias: float
    dimension: int
    library_versions: dict[str, str]
    # one caller at a time: a fast tokenizer shared across threads fails ("Already borrowed")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def images(self, records: Sequence[ImageRecord]) -> np.ndarray:
        pictures = [to_rgb(record) for record in records]
        with self.lock:
            return self._unit(self.encode_images(pictures))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        # in chunks: a card may hold 512 labels x 64 templates, far more prompts than one forward pass should take
        with self.lock:
            chunks = [self._unit(self.encode_texts(list(texts[start:start + TEXT_CHUNK])))
                      for start in range(0, len(texts), TEXT_CHUNK)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dimension), dtype=np.float32)

    @staticmethod
    def _unit(features: Any) -> np.ndarray:
        import torch

        return np.ascontiguousarray(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy(),
                                    dtype=np.float32)


def _pooled(output: Any) -> Any:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return output if hasattr(output, "shape") else output.pooler_output


def _transformers_towers(folder: ModelFolder, architecture: Literal["siglip", "clip"], device: str) -> Towers:
    import torch
    import transformers

    _offline()
    model, processor = folder.load(TRANSFORMERS_CLASSES[architecture], "AutoProcessor", device=device)
    text_config = model.config.text_config
    # SigLIP was trained on texts padded to the full length; CLIP on the longest in the batch
    padding: Any = "max_length" if architecture == "siglip" else True
    dtype = next(model.parameters()).dtype

    def encode_images(pictures: list[Any]) -> Any:
        pixels = processor(images=pictures, return_tensors="pt")["pixel_values"].to(device, dtype)
        with torch.inference_mode():
            return _pooled(model.get_image_features(pixel_values=pixels))

    def encode_texts(texts: list[str]) -> Any:
        tokens = processor(text=texts, padding=padding, truncation=True,
                           max_length=int(text_config.max_position_embeddings), return_tensors="pt")
        inputs = {key: tokens[key].to(device) for key in ("input_ids", "attention_mask") if key in tokens}
        with torch.inference_mode():
            return _pooled(model.get_text_features(**inputs))

    bias = getattr(model, "logit_bias", None)  # SigLIP's learnt sigmoid bias; CLIP has none
    return Towers(architecture, model, encode_images, encode_texts, float(model.logit_scale.detach().exp()),
                  float(bias.detach()) if bias is not None else 0.0, int(encode_texts(["x"]).shape[-1]),
                  {"transformers": transformers.__version__, "torch": torch.__version__})


def _open_clip_towers(folder: ModelFolder, device: str) -> Towers:
    import torch

    try:
        import open_clip
    except ImportError as exc:
        raise MissingDependency("open_clip models need open_clip_torch: pip install 'medagent[experts]'",
                                hint="pip install 'medagent[experts]'") from exc
    name = f"local-dir:{folder.require()}"
    _offline()
    try:
        model, preprocess = open_clip.create_model_from_pretrained(name, device=device, weights_only=True)
        tokenizer = open_clip.get_tokenizer(name)
    except (ValueError, OSError, KeyError, RuntimeError, TypeError) as exc:  # broken config, weights of another shape
        raise ConfigurationError(f"{folder.expert}: open_clip cannot build the model in {folder.path} offline "
                                 f"({type(exc).__name__}).{_text_tower_hint(folder.path)}",
                                 expert=folder.expert) from exc
    model = model.eval()

    def encode_images(pictures: list[Any]) -> Any:
        pixels = torch.stack([preprocess(picture) for picture in pictures]).to(device)
        with torch.inference_mode():
            return model.encode_image(pixels)

    def encode_texts(texts: list[str]) -> Any:
        with torch.inference_mode():
            return model.encode_text(tokenizer(texts).to(device))

    bias = getattr(model, "logit_bias", None)
    dimension = int(encode_texts(["x"]).shape[-1])
    return Towers("open_clip", model, encode_images, encode_texts, float(model.logit_scale.detach().exp()),
                  float(bias.detach()) if bias is not None else 0.0, dimension,
                  {"open_clip": open_clip.__version__, "torch": torch.__version__})


def _text_tower_hint(path: Path) -> str:
    """BiomedCLIP names its text tower's config by Hub id (``text_cfg.hf_model_name``): say which to cache."""
    import json

    try:
        text_cfg = json.loads((path / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]["text_cfg"]
        hub_id = str(text_cfg["hf_model_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not _HUB_ID.fullmatch(hub_id):  # the folder's text, quoted only when it is a plain Hub id
        return ""
    return (f" Its text tower is built from the Hugging Face config of '{hub_id}', which must be in the local "
            f"Hugging Face cache: a connected machine fetches it with `huggingface-cli download {hub_id} "
            "config.json`.")


def load_towers(folder: ModelFolder, architecture: Architecture, device: str) -> Towers:
    """Both towers of the folder's model on ``device`` (WeightsUnavailable when files are missing)."""
    folder.require()
    if architecture == "open_clip":
        return _open_clip_towers(folder, device)
    return _transformers_towers(folder, architecture, device)


def provenance(folder: ModelFolder, towers: Towers, device: str, *, sha256: str | None = None) -> Provenance:
    """Who answered: untrained test weights claim no weights hash (they are no published checkpoint)."""
    untrained = folder.card.untrained_test_only
    return Provenance(expert=folder.expert, model_id=folder.card.model_id or folder.path.name,
                      weights_sha256=None if untrained else sha256 or folder.weights_sha256(), device=device,
                      untrained=untrained, library_versions=towers.library_versions)


def towers_bytes(towers: Towers) -> int:
    return model_bytes(towers.model)
