"""Grad-CAM saliency of the TorchXRayVision classifier, mapped back to the input image and boxed.

A saliency map says where the classifier's score for a label is sensitive to the image. It is not a
detection: its boxes are connected regions of a thresholded map, and every result says so.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medagent.cards import ModelCard
from medagent.errors import ConfigurationError, InvalidToolArguments
from medagent.experts.cxr_classifier import CxrClassifier
from medagent.experts.grounding import GroundedRegion, Grounding, GroundingRequest, pixel_box
from medagent.imaging.record import Modality
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import Provenance


class SaliencyMap(BaseModel):
    """A Grad-CAM grounding plus its heatmap in the input image's pixel grid (not serialised)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    grounding: Grounding
    heatmap: np.ndarray = Field(exclude=True, description="float32 [0, 1], input image shape, 1 = the map's peak")
    probability: float = Field(description="the classifier's probability for the target label")

    @property
    def provenance(self) -> Provenance:
        """The grounding's provenance: every expert result carries one."""
        return self.grounding.provenance


def _cam_layers(model: Any) -> tuple[Any, Any]:
    """(feature module whose output Grad-CAM weighs, module whose output is the logits) of an xrv model."""
    import torch

    features = getattr(model, "features", None)
    if isinstance(features, torch.nn.Module) and hasattr(model, "classifier"):
        return features, model.classifier  # DenseNet: last dense block + norm5, then the linear head
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layer4") and hasattr(inner, "fc"):
        return inner.layer4, inner.fc  # ResNet
    raise ConfigurationError(f"Grad-CAM does not know the layers of {type(model).__name__}")


def grad_cam(model: Any, image: np.ndarray, index: int, device: str) -> tuple[np.ndarray, float]:
    """Grad-CAM of output ``index`` for one preprocessed image (1, R, R): (cam (h, w) >= 0, logit).

    The model may be shared with the classifier, which runs in another thread: the hooks act only in
    this thread, and ``autograd.grad`` leaves no ``.grad`` on the shared parameters.
    """
    import torch

    feature_module, logit_module = _cam_layers(model)
    owner = threading.get_ident()
    captured: dict[str, Any] = {}

    def keep_features(module: Any, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        captured["features"] = output
        return output.clone()  # DenseNet applies an in-place ReLU next; the hooked tensor must stay as it was

    def keep_logits(module: Any, inputs: Any, output: Any) -> None:
        if threading.get_ident() == owner:
            captured["logits"] = output

    handles = [feature_module.register_forward_hook(keep_features), logit_module.register_forward_hook(keep_logits)]
    try:
        with torch.enable_grad():
            batch = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
            batch = batch.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            model(batch)
            features, logit = captured["features"], captured["logits"][0, index]
            (gradients,) = torch.autograd.grad(logit, features)
    finally:
        for handle in handles:
            handle.remove()
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients per channel
    cam = torch.relu((weights * features.detach().float()).sum(dim=1))[0]
    return cam.cpu().numpy().astype(np.float32), float(logit.detach())


def cam_to_image_grid(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo XRayCenterCrop + resize: the map on the input image's grid, [0, 1]; zero outside the crop."""
    import cv2

    height, width = shape
    side = min(height, width)
    top, left = height // 2 - side // 2, width // 2 - side // 2  # as XRayCenterCrop computes them
    heatmap = np.zeros((height, width), dtype=np.float32)
    heatmap[top:top + side, left:left + side] = cv2.resize(cam, (side, side), interpolation=cv2.INTER_LINEAR)
    peak = float(cam.max())
    if peak > 0:
        heatmap /= peak
    return np.clip(heatmap, 0.0, 1.0)


def heatmap_regions(heatmap: np.ndarray, threshold: float = 0.5, max_regions: int = 5,
                    min_area_fraction: float = 0.002) -> list[tuple[tuple[int, int, int, int], float, float]]:
    """Connected regions at or above ``threshold`` of the peak: ((x0, y0, x1, y1), mean, peak), highest peak first."""
    import cv2

    mask = (heatmap >= threshold) & (heatmap > 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    min_area = min_area_fraction * heatmap.size
    regions = []
    for component in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[component])
        if area < min_area:
            continue  # interpolation specks, not regions
        values = heatmap[labels == component]
        regions.append(((x, y, x + w, y + h), float(values.mean()), float(values.max())))
    regions.sort(key=lambda region: (region[2], region[1]), reverse=True)
    return regions[:max_regions]


class SaliencyGrounder(Expert[GroundingRequest, SaliencyMap]):
    name = "saliency_grounder"
    batchable = False  # one backward pass per image; the hooks are per call
    card = ModelCard(
        summary=("Grad-CAM saliency of the chest X-ray classifier for one finding: a heatmap over the image and "
                 "boxes around its strongest regions (a saliency map, not a detection)."),
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        performance="Grad-CAM (Selvaraju et al. 2017); saliency maps localise findings poorly (Saporta et al. 2022).",
        limitations=[
            "shows where the classifier's score is sensitive, not where a finding is",
            "covers only the central square the classifier sees",
            "coarse: one cell per 32 classifier input pixels",
        ],
        references=["https://arxiv.org/abs/1610.02391", "https://doi.org/10.1038/s42256-022-00536-x"],
    )

    def __init__(self, classifier: CxrClassifier, *, threshold: float = 0.5, max_regions: int = 5,
                 **runtime: Any) -> None:
        super().__init__(**runtime)
        self.classifier = classifier
        self.threshold = threshold
        self.max_regions = max_regions

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.classifier.cache_key}"

    def weights_status(self) -> WeightsStatus:
        return self.classifier.weights_status()

    def ready(self) -> bool:
        return self.classifier.ready()

    def loaded(self) -> LoadedModel:
        # the classifier's cache entry holds the network; no second copy, no second cache entry
        return self.load(self.classifier.device)

    def load(self, device: str) -> LoadedModel:
        source = self.classifier.loaded()
        provenance = source.provenance.model_copy(update={"expert": self.name})  # keeps `untrained`
        return LoadedModel(model=source.model, provenance=provenance, size_bytes=0)

    def predict_batch(self, loaded: LoadedModel, items: list[GroundingRequest]) -> list[SaliencyMap | BaseException]:
        results: list[SaliencyMap | BaseException] = []
        for item in items:
            try:
                results.append(self._ground(loaded, item))
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results.append(exc)
        return results

    def _ground(self, loaded: LoadedModel, item: GroundingRequest) -> SaliencyMap:
        record = item.record
        self.card.check_image(record, self.name)
        state = loaded.model
        labels: list[str] = state["labels"]
        if not item.label or item.label not in labels:
            scored = ", ".join(label for label in labels if label)
            raise InvalidToolArguments(f"the classifier weights {self.classifier.weights} do not score "
                                       f"{item.label!r}; they score: {scored}")
        image = self.classifier.preprocess(record, state["resolution"])
        cam, logit = grad_cam(state["model"], image, labels.index(item.label), loaded.provenance.device)
        heatmap = cam_to_image_grid(cam, record.as_2d().shape)
        regions = [
            GroundedRegion(label=f"{item.label} saliency {rank}", box=pixel_box(*box, record.spacing_mm),
                           score=round(mean, 3), peak=round(peak, 3), kind="saliency")
            for rank, (box, mean, peak) in enumerate(heatmap_regions(heatmap, self.threshold, self.max_regions), 1)
        ]
        probability = float(1.0 / (1.0 + np.exp(-logit)))
        evidence = "" if cam.max() > 0 else " Grad-CAM found no region that raises this score (the map is empty)."
        height, width = heatmap.shape
        grounding = Grounding(
            provenance=loaded.provenance,
            phrase=item.phrase,
            interpreted_as=f"saliency for the classifier label {item.label}",
            kind="saliency", regions=regions,
            method=f"Grad-CAM on {loaded.provenance.model_id} (last feature block)",
            image_width=width,
            image_height=height,
            note=(f"Classifier probability for {item.label}: {probability:.2f}. Boxes enclose connected regions "
                  f"where the map reaches {self.threshold:.0%} of its peak: a saliency map, not a detection; "
                  f"it covers only the central square the classifier sees.{evidence}"),
        )
        return SaliencyMap(grounding=grounding, heatmap=heatmap, probability=probability)
