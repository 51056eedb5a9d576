"""Chest X-ray pathology classifier: TorchXRayVision DenseNet-121 / ResNet-50."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from medagent.cards import ModelCard
from medagent.errors import ConfigurationError, MissingDependency, WeightsUnavailable
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.cache import torch_module_bytes
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import ExpertResult, Provenance
from medagent.runtime.weights import WeightsFile, sha256_file

DEFAULT_WEIGHTS = "densenet121-res224-all"
# torchxrayvision.models.model_urls[DEFAULT_WEIGHTS]["weights_url"]'s file name (a test keeps them equal)
DEFAULT_WEIGHTS_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"


def _xrv() -> Any:
    try:
        import torchxrayvision as xrv
    except ImportError as exc:
        raise MissingDependency("the CXR classifier needs the 'experts' extra: pip install 'medagent[experts]'") from exc
    return xrv


def weight_names() -> list[str]:
    """Weight names TorchXRayVision documents (aliases included)."""
    return sorted(_xrv().models.model_urls)


class FindingScore(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0, description="sigmoid output of the network")
    operating_threshold: float | None = Field(
        default=None, description="the model's published operating point for this label (None when unpublished)"
    )
    above_operating_threshold: bool | None = None


class Classification(ExpertResult):
    weights: str
    findings: list[FindingScore] = Field(description="every label the weights predict, highest probability first")
    input_resolution: int
    note: str = (
        "Probabilities are not thresholded at 0.5. A finding is flagged only against the model's own "
        "operating threshold where the weights publish one."
    )

    def top(self, k: int = 3) -> list[FindingScore]:
        return self.findings[:k]

    def label_probabilities(self) -> dict[str, float]:
        """Every label's probability, highest first: what study columns, for_each and hints read."""
        return {finding.label: finding.probability for finding in self.findings}

    def summary_text(self) -> str:
        top = ", ".join(f"{f.label} {f.probability:.2f}" for f in self.top(3))
        flagged = [f.label for f in self.findings if f.above_operating_threshold]
        marker = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        return (f"Chest X-ray classifier{marker}: highest scores {top}; above the model's operating threshold: "
                f"{', '.join(flagged) or 'none'}.")


class CxrClassifier(Expert[ImageRecord, Classification]):
    name = "cxr_classifier"
    card = ModelCard(
        summary=(
            "Scores 18 chest X-ray findings (atelectasis, cardiomegaly, effusion, pneumothorax, ...) with a "
            "TorchXRayVision DenseNet-121 trained on NIH, CheXpert, MIMIC-CXR, PadChest and others."
        ),
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        performance=(
            "Cohen et al. 2022 (arXiv:2111.00595) report per-dataset AUROCs, mostly 0.7-0.9 on held-out sets; "
            "accuracy drops on data unlike the training sets."
        ),
        limitations=[
            "frontal (PA/AP) views only",
            "trained on NLP-mined labels, not radiologist reads",
            "scores are for decision support, not diagnosis",
        ],
        references=["https://github.com/mlmed/torchxrayvision", "https://arxiv.org/abs/2111.00595"],
    )

    def __init__(
        self,
        weights: str = DEFAULT_WEIGHTS,
        *,
        cache_dir: Path | None = None,
        weight_dirs: Sequence[Path] = (),
        allow_untrained_test_only: bool = False,
        **runtime: Any,
    ) -> None:
        super().__init__(**runtime)
        self.weights = weights
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else Path("~/.torchxrayvision/models_data").expanduser()
        # Settings.weight_dirs() first, in order, then TorchXRayVision's own cache; a missing file belongs in the first
        self.search_dirs = [*(Path(d).expanduser() for d in weight_dirs), self.cache_dir]
        self.allow_untrained = allow_untrained_test_only
        self._weights_name: str | None = None

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.weights}:{self.search_dirs}:{self.device}:{self.allow_untrained}"

    def _entry(self) -> dict[str, Any]:
        urls = _xrv().models.model_urls
        if self.weights not in urls:
            raise ConfigurationError(f"unknown TorchXRayVision weights {self.weights!r}; valid: {', '.join(sorted(urls))}")
        return dict(urls[self.weights])

    def weights_file(self) -> WeightsFile:
        url = self._entry()["weights_url"]
        return WeightsFile(file_name=url.rsplit("/", 1)[-1], url=url)

    def weights_status(self) -> WeightsStatus:
        spec = self.weights_file()
        found = spec.locate(self.search_dirs)
        return WeightsStatus(
            present=found is not None,
            path=str(found) if found else None,
            expected_path=str(self.search_dirs[0] / spec.file_name),
            url=spec.url,
        )

    def ready(self) -> bool:
        if self.allow_untrained:
            return True
        if self._weights_name is None:
            # the default's file name is known without importing torchxrayvision (seconds of startup)
            known = DEFAULT_WEIGHTS_FILE if self.weights == DEFAULT_WEIGHTS else None
            self._weights_name = known or self.weights_file().file_name
        return WeightsFile(file_name=self._weights_name).locate(self.search_dirs) is not None

    def load(self, device: str) -> LoadedModel:
        import torch

        xrv = _xrv()
        entry = self._entry()
        labels = list(entry["labels"])
        weights_sha256: str | None = None
        try:
            path = self.weights_file().require(self.search_dirs, self.name)
        except WeightsUnavailable:  # only a missing file; a bad checksum is never papered over
            if not self.allow_untrained:
                raise
            # TEST ONLY: the real architecture with random weights; every result says untrained.
            torch.manual_seed(0)
            architecture = xrv.models.ResNet if self.weights.startswith("resnet") else xrv.models.DenseNet
            model = architecture(num_classes=len(labels)) if architecture is xrv.models.DenseNet else architecture()
            model.targets = model.pathologies = labels
            untrained = True
        else:
            weights_sha256 = sha256_file(path)
            # the library loads <cache_dir>/<file name>: the folder where the file was found
            model = xrv.models.get_model(self.weights, cache_dir=str(path.parent))
            untrained = False
        # Report sigmoid probabilities and the published thresholds side by side instead of
        # letting the library rescale outputs so that its threshold lands on 0.5.
        model.op_threshs = None
        model.apply_sigmoid = True
        # channels_last runs DenseNet's convolutions faster on both oneDNN (CPU) and cuDNN.
        model = model.to(device, memory_format=torch.channels_last).eval()
        provenance = Provenance(
            expert=self.name,
            model_id=f"torchxrayvision/{self.weights}",
            weights_sha256=weights_sha256,
            device=device,
            untrained=untrained,
            library_versions={"torchxrayvision": xrv.__version__, "torch": torch.__version__},
        )
        state = {"model": model, "labels": labels, "thresholds": entry.get("op_threshs"),
                 "resolution": int(entry.get("input_resolution", 224))}
        return LoadedModel(model=state, provenance=provenance, size_bytes=torch_module_bytes(model))

    def preprocess(self, record: ImageRecord, resolution: int) -> np.ndarray:
        """TorchXRayVision's own preprocessing: [-1024, 1024] scaling, centre crop, resize."""
        xrv = _xrv()
        self.card.check_image(record, self.name)
        image = record.as_2d() * 2048.0 - 1024.0  # display [0, 1] -> the library's [-1024, 1024]
        image = image[None, :, :]
        image = xrv.datasets.XRayCenterCrop()(image)
        image = xrv.datasets.XRayResizer(resolution, engine="cv2")(image)
        return np.asarray(image, dtype=np.float32)

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[Classification | BaseException]:
        import torch

        state = loaded.model
        results: list[Classification | BaseException | None] = [None] * len(items)
        tensors, positions = [], []
        for index, record in enumerate(items):
            try:
                tensors.append(self.preprocess(record, state["resolution"]))
                positions.append(index)
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results[index] = exc
        if tensors:
            batch = torch.from_numpy(np.stack(tensors)).to(loaded.provenance.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                probabilities = state["model"](batch).float().cpu().numpy()
            for row, index in zip(probabilities, positions, strict=True):
                results[index] = self._result(row, state, loaded.provenance)
        return results  # type: ignore[return-value]

    def _result(self, row: np.ndarray, state: dict[str, Any], provenance: Provenance) -> Classification:
        thresholds = state["thresholds"]
        findings = []
        for position, label in enumerate(state["labels"]):
            if not label:
                continue  # the weights do not predict this slot
            probability = float(np.clip(row[position], 0.0, 1.0))
            threshold = None
            if thresholds is not None and not np.isnan(thresholds[position]):
                threshold = float(thresholds[position])
            findings.append(
                FindingScore(
                    label=label,
                    probability=probability,
                    operating_threshold=threshold,
                    above_operating_threshold=None if threshold is None else probability >= threshold,
                )
            )
        findings.sort(key=lambda finding: finding.probability, reverse=True)
        return Classification(
            provenance=provenance, weights=self.weights, findings=findings, input_resolution=state["resolution"]
        )
