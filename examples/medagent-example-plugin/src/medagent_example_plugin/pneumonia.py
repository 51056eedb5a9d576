"""An expert on a real small network: torchvision's ResNet-18 with two classes (normal, pneumonia) on a
frontal chest radiograph, offered to planners with ``expert_tool``.

No trained weights ship with this example: put your own state dict (``torch.save(model.state_dict(), ...)``
of ``torchvision.models.resnet18(num_classes=2)``) at ``<weights dir>/pneumonia_resnet18.pt``. torch and
torchvision are imported only when the model loads, so listing and offering the tool need neither."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medagent.config import Settings
from medagent.errors import ConfigurationError, MissingDependency, WeightsUnavailable
from medagent.experts import Expert, ExpertResult, LoadedModel, ModelCard, Provenance, WeightsStatus
from medagent.imaging import ImageRecord, Modality
from medagent.runtime.cache import shared_cache, torch_module_bytes
from medagent.runtime.weights import WeightsFile, sha256_file
from medagent.tools import Tool, ToolPolicy, expert_tool

TOOL_NAME = "classify_pneumonia"
WEIGHTS_FILE = "pneumonia_resnet18.pt"
Label = Literal["normal", "pneumonia"]
LABELS: tuple[Label, Label] = ("normal", "pneumonia")
INSTALL_HINT = "pip install 'medagent-example-plugin[model]' (torch and torchvision)"
_RESOLUTION = 224
_IMAGENET_MEAN, _IMAGENET_STD = 0.449, 0.226  # grey-level mean/std of ImageNet, as the network was pretrained


class PneumoniaScore(ExpertResult):
    probability: float = Field(ge=0.0, le=1.0, description="softmax probability of pneumonia")
    label: Label = Field(description="the more probable class")

    def summary_text(self) -> str:
        marker = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        return f"Pneumonia classifier{marker}: {self.label}, pneumonia probability {self.probability:.2f}."


class PneumoniaResNet(Expert[ImageRecord, PneumoniaScore]):
    name = "pneumonia_resnet18"
    card = ModelCard(
        summary="Scores a frontal chest radiograph for pneumonia versus normal with a ResNet-18 "
                "(two-class softmax).",
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        performance="depends on the weights you supply; none ship with this example",
        limitations=["frontal views only", "an example network: validate your weights before any use"],
        references=["https://pytorch.org/vision/stable/models/resnet.html"],
    )

    def __init__(self, weight_dirs: list[Path], *, weights_file: str = WEIGHTS_FILE,
                 weights_sha256: str | None = None, allow_untrained_test_only: bool = False, **runtime: Any) -> None:
        super().__init__(**runtime)
        if not weight_dirs:
            raise ConfigurationError(f"{self.name}: no weights folder configured")
        self.weight_dirs = [Path(directory).expanduser() for directory in weight_dirs]
        # a plain file name: a study's kwargs must not pick a path
        if Path(weights_file).name != weights_file or weights_file in ("", ".", ".."):
            raise ConfigurationError(f"{self.name}: weights_file is a file name, not a path")
        self.weights = WeightsFile(file_name=weights_file, sha256=weights_sha256)
        self.allow_untrained = allow_untrained_test_only

    @property
    def cache_key(self) -> str:
        dirs = ",".join(map(str, self.weight_dirs))
        return f"{self.name}:{dirs}:{self.weights.file_name}:{self.weights.sha256}:{self.device}:{self.allow_untrained}"

    def weights_status(self) -> WeightsStatus:
        found = self.weights.locate(self.weight_dirs)
        return WeightsStatus(present=found is not None, path=str(found) if found else None,
                             expected_path=str(self.weight_dirs[0] / self.weights.file_name))

    def ready(self) -> bool:
        return self.allow_untrained or self.weights.locate(self.weight_dirs) is not None

    def load(self, device: str) -> LoadedModel:
        import torch
        import torchvision  # type: ignore[import-untyped]

        try:
            path = self.weights.require(self.weight_dirs, self.name)  # checks a pinned sha256
        except WeightsUnavailable:  # only a missing file; a checksum mismatch is never papered over
            if not self.allow_untrained:
                raise
            torch.manual_seed(0)  # TEST ONLY: the real architecture, random weights; results say untrained
            model = torchvision.models.resnet18(num_classes=len(LABELS))
            sha256, untrained = None, True
        else:
            model = torchvision.models.resnet18(num_classes=len(LABELS))
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # noqa: BLE001 - pickles of other objects, other networks, truncated files
                raise ConfigurationError(f"{self.name}: {self.weights.file_name} is not a state dict of a two-class "
                                         f"ResNet-18 ({type(exc).__name__})") from None
            sha256, untrained = sha256_file(path), False
        model = model.to(device).eval()
        provenance = Provenance(expert=self.name, model_id=f"torchvision/resnet18:{self.weights.file_name}",
                                weights_sha256=sha256, device=device, untrained=untrained,
                                library_versions={"torch": torch.__version__, "torchvision": torchvision.__version__})
        return LoadedModel(model=model, provenance=provenance, size_bytes=torch_module_bytes(model))

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[PneumoniaScore | BaseException]:
        import torch

        results: list[PneumoniaScore | BaseException | None] = [None] * len(items)
        tensors, positions = [], []
        for index, record in enumerate(items):
            try:
                self.card.check_image(record, self.name)
                tensors.append(_preprocess(record))
                positions.append(index)
            except Exception as exc:  # noqa: BLE001 - a bad item fails alone
                results[index] = exc
        if tensors:
            batch = torch.from_numpy(np.stack(tensors)).to(loaded.provenance.device)
            with torch.inference_mode():
                probabilities = torch.softmax(loaded.model(batch).float(), dim=1)[:, 1].cpu().numpy()
            for probability, index in zip(probabilities, positions, strict=True):
                results[index] = PneumoniaScore(provenance=loaded.provenance, probability=float(probability),
                                                label=LABELS[int(probability >= 0.5)])
        return [result for result in results if result is not None]


def _preprocess(record: ImageRecord) -> np.ndarray:
    """[0, 1] display image -> 3 x 224 x 224, normalised as for ImageNet-pretrained torchvision networks."""
    from PIL import Image

    picture = Image.fromarray((record.as_2d() * 255).astype(np.uint8), mode="L")
    grey = np.asarray(picture.resize((_RESOLUTION, _RESOLUTION), Image.Resampling.BILINEAR), dtype=np.float32)
    grey = (grey / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    return np.repeat(grey[None], 3, axis=0)


def tools(settings: Settings, *, weights_file: str = WEIGHTS_FILE, weights_sha256: str | None = None) -> list[Tool]:
    """The entry point's factory. Checks that torch and torchvision are installed without importing them:
    without them the plugin is listed as unavailable with :data:`INSTALL_HINT`, and nothing else breaks."""
    missing = [module for module in ("torch", "torchvision") if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependency(f"{TOOL_NAME} needs {' and '.join(missing)}: {INSTALL_HINT}", hint=INSTALL_HINT)
    expert = PneumoniaResNet(settings.weight_dirs(), weights_file=weights_file, weights_sha256=weights_sha256,
                             allow_untrained_test_only=settings.allow_untrained_test_only, device=settings.device,
                             cache=shared_cache(settings.model_cache_mb), max_batch_size=settings.max_batch_size,
                             max_wait_ms=settings.max_batch_wait_ms)
    return [expert_tool(expert, PneumoniaScore, name=TOOL_NAME, policy=ToolPolicy(timeout_s=60))]
