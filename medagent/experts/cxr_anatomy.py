"""Chest X-ray anatomy segmentation: TorchXRayVision's ChestX-Det PSPNet (14 structures)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medagent.cards import ModelCard
from medagent.errors import ConfigurationError, MissingDependency, WeightsUnavailable
from medagent.experts.segmentation import Segmentation
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.cache import torch_module_bytes
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import Provenance
from medagent.runtime.weights import WeightsFile, sha256_file

# As torchxrayvision.baseline_models.chestx_det.PSPNet names and fetches them (1.5.x).
WEIGHTS_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/pspnet_chestxray_best_model_4.pth"
WEIGHTS_FILE = WEIGHTS_URL.rsplit("/", 1)[-1]
DEFAULT_CACHE_DIR = Path("~/.torchxrayvision/models_data")  # torchxrayvision.utils.get_cache_dir()
RESOLUTION = 512  # the network's native input side
MASK_THRESHOLD = 0.5  # on the per-structure sigmoid, as in the library's segmentation demo
# PSPNet.targets; repeated here so tool arguments validate without importing torch. load() checks they agree.
STRUCTURES = [
    "Left Clavicle", "Right Clavicle", "Left Scapula", "Right Scapula", "Left Lung", "Right Lung",
    "Left Hilus Pulmonis", "Right Hilus Pulmonis", "Heart", "Aorta", "Facies Diaphragmatica",
    "Mediastinum", "Weasand", "Spine",
]
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def _chestx_det() -> Any:
    try:
        from torchxrayvision.baseline_models import chestx_det
    except ImportError as exc:
        raise MissingDependency(
            "the anatomy segmenter needs the 'experts' extra: pip install 'medagent[experts]'"
        ) from exc
    return chestx_det


def _strip_data_parallel(state: dict[str, Any]) -> OrderedDict[str, Any]:
    """The published file was saved from ``nn.DataParallel``: its keys start with ``module.``."""
    prefix = "module."
    if state and all(key.startswith(prefix) for key in state):
        return OrderedDict((key[len(prefix):], value) for key, value in state.items())
    return OrderedDict(state)


def pad_to_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad the short side (centred) so nothing is cropped away; returns the (top, left) offsets."""
    height, width = image.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.zeros((side, side), dtype=np.float32)
    square[top:top + height, left:left + width] = image
    return square, (top, left)


class CxrAnatomySegmenter(Expert[ImageRecord, Segmentation]):
    name = "cxr_anatomy_segmenter"
    card = ModelCard(
        summary=(
            "Segments 14 anatomical structures on a frontal chest X-ray (lungs, heart, aorta, mediastinum, clavicles, "
            "scapulae, hila, diaphragm, trachea ('Weasand'), spine) with TorchXRayVision's ChestX-Det PSPNet; reports "
            "areas, boxes, centroids and the cardiothoracic ratio, and stores the masks."
        ),
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        valid_arguments={"structures": STRUCTURES},
        performance=(
            "Trained on ChestX-Det (3,578 NIH ChestX-ray14 images with expert anatomy masks); torchxrayvision "
            "publishes no held-out accuracy for these weights, so treat outlines as approximate."
        ),
        limitations=[
            "frontal PA/AP views only; trained on one data source (NIH), accuracy elsewhere unknown",
            "works at 512 x 512: thin structures (clavicle edges, hila) are coarse on large images",
            "outlines of structures hidden by effusion, consolidation or devices are unreliable",
            "the cardiothoracic ratio is a mask-based estimate, and AP views overstate it",
            "areas are projected 2D areas; without pixel spacing they are in pixels only",
        ],
        references=[
            "https://github.com/mlmed/torchxrayvision",
            ("Lian J et al. A Structure-Aware Relation Network for Thoracic Diseases Detection and Segmentation. "
             "IEEE TMI 2021 (arXiv:2104.10326)"),
            "https://github.com/Deepwise-AILab/ChestX-Det-Dataset",
        ],
    )

    def __init__(self, *, cache_dir: Path | None = None, weight_dirs: Sequence[Path] = (),
                 allow_untrained_test_only: bool = False, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
        # Settings.weight_dirs() first, in order, then TorchXRayVision's own cache; a missing file belongs in the first
        self.search_dirs = [*(Path(d).expanduser() for d in weight_dirs), self.cache_dir]
        self.allow_untrained = allow_untrained_test_only

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.search_dirs}:{self.device}:{self.allow_untrained}"

    @staticmethod
    def structures() -> list[str]:
        return list(STRUCTURES)

    def weights_file(self) -> WeightsFile:
        return WeightsFile(file_name=WEIGHTS_FILE, url=WEIGHTS_URL)

    def weights_status(self) -> WeightsStatus:
        found = self.weights_file().locate(self.search_dirs)
        return WeightsStatus(present=found is not None, path=str(found) if found else None,
                             expected_path=str(self.search_dirs[0] / WEIGHTS_FILE), url=WEIGHTS_URL)

    def ready(self) -> bool:
        return self.allow_untrained or self.weights_file().locate(self.search_dirs) is not None

    def load(self, device: str) -> LoadedModel:
        import torch
        import torchxrayvision as xrv

        chestx_det = _chestx_det()
        labels = list(chestx_det.PSPNet.targets)
        if labels != STRUCTURES:
            raise ConfigurationError("this torchxrayvision version names the PSPNet structures differently")
        try:
            path: Path | None = self.weights_file().require(self.search_dirs, self.name)
        except WeightsUnavailable:  # only a missing file; a bad checksum is never papered over
            if not self.allow_untrained:
                raise
            path = None
        # The library's PSPNet() downloads missing weights in its constructor, so the network is
        # built from its architecture module and the state file is loaded here.
        weights_sha256: str | None = None
        if path is None:
            torch.manual_seed(0)  # TEST ONLY: the real architecture with random weights; results say untrained
            network = chestx_det.pspnet(len(labels))
        else:
            weights_sha256 = sha256_file(path)
            network = chestx_det.pspnet(len(labels))
            state = torch.load(path, map_location="cpu", weights_only=True)
            network.load_state_dict(_strip_data_parallel(state))
        network = network.to(device).eval()
        provenance = Provenance(
            expert=self.name, model_id="torchxrayvision/chestx_det-pspnet", weights_sha256=weights_sha256,
            device=device, untrained=path is None,
            library_versions={"torchxrayvision": xrv.__version__, "torch": torch.__version__},
        )
        return LoadedModel(model={"network": network, "labels": labels}, provenance=provenance,
                           size_bytes=torch_module_bytes(network))

    def preprocess(self, record: ImageRecord) -> tuple[np.ndarray, tuple[int, int], int]:
        """The network input (3 x 512 x 512, ImageNet-normalised), the pad offsets and the padded side.

        Equivalent to the library's forward: [-1024, 1024] -> [0, 1], grey repeated to 3 channels,
        torchvision Normalize with ImageNet statistics.
        """
        import cv2

        self.card.check_image(record, self.name)
        square, offsets = pad_to_square(record.as_2d())
        small = cv2.resize(square, (RESOLUTION, RESOLUTION), interpolation=cv2.INTER_AREA)
        channels = np.repeat(small[None], 3, axis=0)
        return ((channels - _IMAGENET_MEAN) / _IMAGENET_STD).astype(np.float32), offsets, square.shape[0]

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[Segmentation | BaseException]:
        import torch

        results: list[Segmentation | BaseException | None] = [None] * len(items)
        inputs, positions = [], []
        for index, record in enumerate(items):
            try:
                inputs.append(self.preprocess(record))
                positions.append(index)
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results[index] = exc
        if inputs:
            batch = torch.from_numpy(np.stack([tensor for tensor, _, _ in inputs])).to(loaded.provenance.device)
            with torch.inference_mode(), warnings.catch_warnings():
                # the library's PSPNet calls the deprecated F.upsample; the result is identical to interpolate
                warnings.filterwarnings("ignore", message=r".*nn\.functional\.upsample.* is deprecated",
                                        category=UserWarning)
                probabilities = torch.sigmoid(loaded.model["network"](batch)).float().cpu().numpy()
            for maps, (_, offsets, side), index in zip(probabilities, inputs, positions, strict=True):
                try:
                    results[index] = self._result(maps, offsets, side, items[index], loaded)
                except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                    results[index] = exc
        return results  # type: ignore[return-value]

    def _result(self, maps: np.ndarray, offsets: tuple[int, int], side: int, record: ImageRecord,
                loaded: LoadedModel) -> Segmentation:
        import cv2

        height, width = record.as_2d().shape
        top, left = offsets
        masks = {}
        for label, probability in zip(loaded.model["labels"], maps, strict=True):
            # resize the probability, not the mask, back to the input grid: smoother outlines
            full = cv2.resize(probability, (side, side), interpolation=cv2.INTER_LINEAR)
            masks[label] = full[top:top + height, left:left + width] >= MASK_THRESHOLD
        return Segmentation.from_masks(masks, record, loaded.provenance, "Chest X-ray anatomy segmentation (PSPNet)",
                                       model_resolution=RESOLUTION)
