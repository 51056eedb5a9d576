"""Zero-shot and linear-probe classification with CLIP-style models (SigLIP, CLIP, open_clip/BiomedCLIP).

Each label's text embedding is the mean of its prompts (``card.templates``), computed once when the model loads.
Zero-shot scores are the model's own image-text logits; with ``linear_head`` a trained probe (weight
[labels, dim], bias [labels]) over the normalised image embedding replaces them. Probabilities are independent
sigmoids per label (SigLIP's training, or ``multi_label``) or a softmax over the card's labels.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from medagent.config import Settings
from medagent.errors import LinearHeadMismatch
from medagent.families.card import ZeroShotCard
from medagent.families.clip_towers import Towers, load_towers, model_folder, provenance, towers_bytes
from medagent.imaging.record import ImageRecord
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import ExpertResult
from medagent.tools.plugin import expert_tool
from medagent.tools.spec import Tool, ToolPolicy

Method = Literal["zero_shot", "linear_probe"]


class LabelScore(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class ZeroShotClassification(ExpertResult):
    method: Method = Field(description="zero_shot: image-text similarity to the label prompts; linear_probe: the "
                                       "card's trained head over the image embedding")
    multi_label: bool = Field(description="True: an independent sigmoid per label; False: a softmax over the labels")
    scores: list[LabelScore] = Field(description="every label of the card, highest probability first")
    note: str = "Scores are relative to the card's label set only; a label not offered cannot be found."

    def label_probabilities(self) -> dict[str, float]:
        """Every label's probability, highest first: what study columns, for_each and hints read."""
        return {score.label: score.probability for score in self.scores}

    def summary_text(self) -> str:
        top = ", ".join(f"{s.label} {s.probability:.2f}" for s in self.scores[:3])
        marker = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        how = "linear probe" if self.method == "linear_probe" else "zero-shot"
        return f"{self.provenance.expert} {how} classification{marker}: {top}."


def _label_embeddings(towers: Towers, card: ZeroShotCard) -> np.ndarray:
    """[labels, dim]: the renormalised mean of each label's prompt embeddings (one text pass for all)."""
    prompts = [template.replace("{label}", label) for label in card.labels for template in card.templates]
    vectors = towers.texts(prompts).reshape(len(card.labels), len(card.templates), -1).mean(axis=1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def read_linear_head(path: Any, labels: int, dimension: int, expert: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight [labels, dim], bias [labels]) from a safetensors file, or LinearHeadMismatch saying what differs."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LinearHeadMismatch(f"{expert}: the linear head file is not a readable safetensors file",
                                 expert=expert) from exc
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None:
        raise LinearHeadMismatch(f"{expert}: the linear head needs tensors 'weight' and 'bias' (found "
                                 f"{len(tensors)} others)", expert=expert)
    if weight.shape != (labels, dimension) or bias.shape != (labels,):
        raise LinearHeadMismatch(
            f"{expert}: the linear head has weight {list(weight.shape)} and bias {list(bias.shape)}; this card "
            f"needs weight [{labels}, {dimension}] (labels x embedding) and bias [{labels}]",
            expert=expert, expected_weight=[labels, dimension], weight=list(weight.shape), bias=list(bias.shape))
    return weight.astype(np.float32), bias.astype(np.float32)


class ZeroShotClassifier(Expert[ImageRecord, ZeroShotClassification]):
    """One card's classifier. Build it with :func:`classifier` (the name and model card come from the card)."""

    name = "zero_shot"

    def __init__(self, family_card: ZeroShotCard, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.family_card = family_card
        extra = (family_card.linear_head,) if family_card.linear_head else ()
        self.folder = model_folder(family_card, family_card.architecture, self.name, extra=extra)
        self.multi_label = (family_card.multi_label if family_card.multi_label is not None
                            else family_card.architecture == "siglip")

    @property
    def cache_key(self) -> str:
        return f"zero_shot:{self.name}:{self.folder.path}:{self.family_card.linear_head}:{self.device}"

    def weights_status(self) -> WeightsStatus:
        return self.folder.status()

    def load(self, device: str) -> LoadedModel:
        card = self.family_card
        towers = load_towers(self.folder, card.architecture, device)
        head = (read_linear_head(self.folder.path / card.linear_head, len(card.labels), towers.dimension, self.name)
                if card.linear_head else None)
        state = {"towers": towers, "labels": _label_embeddings(towers, card), "head": head}
        return LoadedModel(model=state, provenance=provenance(self.folder, towers, device),
                           size_bytes=towers_bytes(towers))

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]
                      ) -> list[ZeroShotClassification | BaseException]:
        results: list[ZeroShotClassification | BaseException | None] = [None] * len(items)
        good: list[int] = []
        for index, record in enumerate(items):
            try:
                if not isinstance(record, ImageRecord):
                    raise TypeError(f"expected an ImageRecord, got {type(record).__name__}")
                self.card.check_image(record, self.name)
                good.append(index)
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results[index] = exc
        if good:
            state = loaded.model
            images = state["towers"].images([items[i] for i in good])  # one image-tower pass for the batch
            for index, row in zip(good, self._probabilities(state, images), strict=True):
                results[index] = self._result(row, loaded)
        return results  # type: ignore[return-value]

    def _probabilities(self, state: dict[str, Any], images: np.ndarray) -> np.ndarray:
        towers: Towers = state["towers"]
        if state["head"] is not None:
            weight, bias = state["head"]
            logits = images @ weight.T + bias
        else:
            logits = towers.logit_scale * (images @ state["labels"].T) + towers.logit_bias
        logits = logits.astype(np.float64)
        if self.multi_label:
            return np.asarray(1.0 / (1.0 + np.exp(-logits)))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))

    def _result(self, row: np.ndarray, loaded: LoadedModel) -> ZeroShotClassification:
        scores = sorted((LabelScore(label=label, probability=float(np.clip(p, 0.0, 1.0)))
                         for label, p in zip(self.family_card.labels, row, strict=True)),
                        key=lambda score: score.probability, reverse=True)
        return ZeroShotClassification(provenance=loaded.provenance, multi_label=self.multi_label, scores=scores,
                                      method="linear_probe" if self.family_card.linear_head else "zero_shot")


def classifier(card: ZeroShotCard, settings: Settings | None = None) -> ZeroShotClassifier:
    """The card's classifier: named after the card, its model card built from the card's fields."""
    settings = settings or Settings()
    how = "a trained linear probe over" if card.linear_head else "zero-shot prompts to"
    summary = (f"Scores an image against the labels {', '.join(card.labels[:12])}"
               f"{' and more' if len(card.labels) > 12 else ''} with {how} a {card.architecture} image-text model; "
               "returns a probability per label.")
    subclass = type(f"ZeroShotClassifier_{card.name}", (ZeroShotClassifier,),
                    {"name": card.name, "card": card.model_card(summary)})
    expert: ZeroShotClassifier = subclass(card, device=settings.device,
                                          max_batch_size=card.max_batch_size or settings.max_batch_size,
                                          max_wait_ms=settings.max_batch_wait_ms)
    return expert


def tools(card: ZeroShotCard, settings: Settings) -> list[Tool[Any, Any]]:
    """``{name}_classify``: the card's label probabilities for an attached image."""
    policy = ToolPolicy(timeout_s=card.timeout_s, max_concurrency=card.max_concurrency)
    return [expert_tool(classifier(card, settings), ZeroShotClassification, name=f"{card.name}_classify",
                        policy=policy)]
