"""A local MONAI bundle folder: metadata, inference config, network definition and weights.

Standard layout (as published in the MONAI Model Zoo, e.g. ``spleen_ct_segmentation``)::

    <bundle>/configs/metadata.json        labels: network_data_format.outputs.pred.channel_def
    <bundle>/configs/inference.json|yaml  network_def (``_target_``), inferer, preprocessing
    <bundle>/models/model.pt              state_dict of network_def (or model.ts, TorchScript)

Config values are resolved only through MONAI's own :class:`monai.bundle.ConfigParser`
(``_target_``, ``@`` references, ``$`` expressions): the bundle is trusted like any model code,
and medagent never evaluates strings itself. Metadata and labels are plain JSON and need no torch.
"""

from __future__ import annotations

import json
import pickle
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from medagent.errors import ConfigurationError, MissingDependency, WeightsUnavailable
from medagent.runtime.weights import WeightsFile, sha256_file

WeightsFormat = Literal["pt", "ts"]
_WEIGHT_FILE = {"pt": "model.pt", "ts": "model.ts"}
_INTENSITY_TRANSFORMS = frozenset({
    "ScaleIntensityRanged", "ScaleIntensityd", "NormalizeIntensityd", "ScaleIntensityRangePercentilesd",
    "ClipIntensityPercentilesd", "ThresholdIntensityd", "ShiftIntensityd", "ScaleIntensityFixedMeand",
})


class BundleUnavailable(WeightsUnavailable):
    """The bundle folder (or its configs) is not on disk: nothing to build, so no untrained fallback."""

    code = "bundle_unavailable"


class BundleMetadata(BaseModel):
    name: str = Field(description="metadata 'name', else the folder name")
    version: str
    task: str | None = None
    description: str | None = None
    monai_version: str | None = None
    input_modality: str | None = Field(default=None, description="network_data_format.inputs.image.modality")
    channel_def: dict[int, str] = Field(description="output channel -> label, from outputs.pred.channel_def")

    @property
    def foreground_labels(self) -> list[str]:
        return [label for _, label in sorted(self.channel_def.items()) if label.lower() != "background"]


class SlidingWindowConfig(BaseModel):
    roi_size: tuple[int, int, int]
    sw_batch_size: int = Field(default=1, ge=1)
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    mode: str = "constant"
    padding_mode: str = "constant"


class PreprocessStep(BaseModel):
    """One preprocessing transform medagent reproduces, in the bundle's order."""

    kind: Literal["orientation", "spacing", "intensity"]
    target: str
    config_id: str
    axcodes: str | None = None
    pixdim: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"


class PreprocessPlan(BaseModel):
    steps: list[PreprocessStep] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="transforms not reproduced (loading, typing, ...)")


def _monai_bundle() -> Any:
    try:
        import monai.bundle
    except ImportError as exc:
        raise MissingDependency("MONAI bundles need the 'experts' extra: pip install 'medagent[experts]'") from exc
    return monai.bundle


class MonaiBundle:
    """Reads one bundle folder lazily; only :meth:`load_network` and config parsing import MONAI."""

    def __init__(self, root: Path, *, expected_sha256: str | None = None, weights_format: WeightsFormat = "pt") -> None:
        self.root = Path(root).expanduser()
        self.expected_sha256 = expected_sha256
        self.weights_format = weights_format

    @classmethod
    def from_bundles_dir(cls, bundles_dir: Path, bundle_name: str, **options: Any) -> MonaiBundle:
        return cls(Path(bundles_dir).expanduser() / bundle_name, **options)

    def _require_folder(self) -> None:
        if not self.root.is_dir():
            raise BundleUnavailable(
                f"MONAI bundle folder not found: expected {self.root} holding configs/metadata.json, "
                "configs/inference.json and models/model.pt (download the bundle on a connected machine)",
                expected_path=str(self.root),
            )

    @property
    def metadata_path(self) -> Path:
        return self.root / "configs" / "metadata.json"

    @property
    def inference_config_path(self) -> Path:
        self._require_folder()
        for name in ("inference.json", "inference.yaml", "inference.yml"):
            if (self.root / "configs" / name).is_file():
                return self.root / "configs" / name
        raise BundleUnavailable(f"no configs/inference.json or .yaml in {self.root}",
                                expected_path=str(self.root / "configs" / "inference.json"))

    @cached_property
    def metadata(self) -> BundleMetadata:
        self._require_folder()
        if not self.metadata_path.is_file():
            raise BundleUnavailable(f"bundle metadata missing: expected {self.metadata_path}",
                                    expected_path=str(self.metadata_path))
        try:
            raw = json.loads(self.metadata_path.read_text(encoding="utf-8"))
            data_format = raw.get("network_data_format", {})
            channel_def = data_format["outputs"]["pred"]["channel_def"]
            labels = {int(channel): str(label) for channel, label in channel_def.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"{self.metadata_path.name} of bundle {self.root.name} lacks a valid "
                f"network_data_format.outputs.pred.channel_def ({type(exc).__name__})"
            ) from None
        image = data_format.get("inputs", {}).get("image", {})
        return BundleMetadata(
            name=str(raw.get("name") or self.root.name), version=str(raw.get("version", "unknown")),
            task=raw.get("task"), description=raw.get("description"), monai_version=raw.get("monai_version"),
            input_modality=image.get("modality") if isinstance(image, dict) else None, channel_def=labels,
        )

    @property
    def model_id(self) -> str:
        return f"monai-bundle:{self.metadata.name}@{self.metadata.version}"

    def weights_file(self) -> WeightsFile:
        return WeightsFile(file_name=_WEIGHT_FILE[self.weights_format], sha256=self.expected_sha256)

    @property
    def weights_dir(self) -> Path:
        return self.root / "models"

    def require_weights(self, expert: str) -> Path:
        """``models/model.pt`` (or .ts); WeightsUnavailable names that exact path, ChecksumMismatch on a bad hash."""
        self._require_folder()
        return self.weights_file().require([self.weights_dir], expert)

    # -- the inference config, through MONAI's parser ---------------------------------------------

    @cached_property
    def parser(self) -> Any:
        parser = _monai_bundle().ConfigParser()
        parser.read_config(str(self.inference_config_path))
        return parser

    def _parsed(self, config_id: str, default: Any = None) -> Any:
        return default if self.parser.get(config_id) is None else self.parser.get_parsed_content(config_id)

    def _inferer_id(self) -> str | None:
        def is_sliding(value: Any) -> bool:
            return isinstance(value, dict) and str(value.get("_target_", "")).endswith("SlidingWindowInferer")

        if is_sliding(self.parser.get("inferer")):
            return "inferer"
        return next((str(key) for key, value in (self.parser.get("") or {}).items() if is_sliding(value)), None)

    def sliding_window(self) -> SlidingWindowConfig | None:
        """The inferer's roi_size / sw_batch_size / overlap / mode, or None when the bundle declares none."""
        inferer = self._inferer_id()
        if inferer is None:
            return None
        roi = self._parsed(f"{inferer}#roi_size")
        roi = [int(roi)] * 3 if isinstance(roi, (int, float)) else [int(v) for v in roi]
        if len(roi) != 3 or min(roi) <= 0:
            raise ConfigurationError(f"bundle {self.root.name}: inferer roi_size must be three positive sizes")
        return SlidingWindowConfig(
            roi_size=(roi[0], roi[1], roi[2]),
            sw_batch_size=int(self._parsed(f"{inferer}#sw_batch_size", 1)),
            overlap=float(self._parsed(f"{inferer}#overlap", 0.25)),
            mode=str(self._parsed(f"{inferer}#mode", "constant")),
            padding_mode=str(self._parsed(f"{inferer}#padding_mode", "constant")),
        )

    def preprocessing(self) -> PreprocessPlan:
        """Orientation, spacing and intensity steps of ``preprocessing``; the rest is listed as skipped."""
        plan = PreprocessPlan()
        transforms = self.parser.get("preprocessing#transforms") or []
        for index, raw in enumerate(transforms):
            target = str(raw.get("_target_", "")) if isinstance(raw, dict) else ""
            name = target.rsplit(".", 1)[-1]
            config_id = f"preprocessing#transforms#{index}"
            if not name or raw.get("_disabled_") in (True, "true"):
                continue
            if name == "Orientationd":
                plan.steps.append(PreprocessStep(kind="orientation", target=name, config_id=config_id,
                                                 axcodes=str(self._parsed(f"{config_id}#axcodes", "RAS"))))
            elif name == "Spacingd":
                value = self._parsed(f"{config_id}#pixdim")
                pixdim = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value or []]
                if len(pixdim) != 3:
                    plan.skipped.append(f"{name} (pixdim is not three sizes)")
                    continue
                mode = self._parsed(f"{config_id}#mode", "bilinear")
                plan.steps.append(PreprocessStep(kind="spacing", target=name, config_id=config_id,
                                                 pixdim=(pixdim[0], pixdim[1], pixdim[2]),
                                                 interpolation=str(mode[0] if isinstance(mode, list) else mode)))
            elif name in _INTENSITY_TRANSFORMS:
                plan.steps.append(PreprocessStep(kind="intensity", target=name, config_id=config_id))
            else:
                plan.skipped.append(name)
        return plan

    def intensity_transform(self, step: PreprocessStep) -> Any:
        """The bundle's own MONAI dictionary transform for an intensity step, instantiated by ConfigParser."""
        return self.parser.get_parsed_content(step.config_id)

    def build_network(self) -> Any:
        if self.parser.get("network_def") is None:
            raise ConfigurationError(f"bundle {self.root.name}: inference config has no network_def")
        return self.parser.get_parsed_content("network_def")

    def load_network(self, device: str, expert: str, *, allow_untrained: bool = False) -> tuple[Any, str | None]:
        """(eval-mode network on ``device``, weights sha256); random weights only if allowed and the file is missing."""
        import torch

        try:
            path = self.require_weights(expert)
        except BundleUnavailable:
            raise
        except WeightsUnavailable:  # only a missing weight file; a checksum mismatch is never papered over
            if not allow_untrained:
                raise
            torch.manual_seed(0)  # TEST ONLY: the bundle's real network_def with random weights
            return self.build_network().to(device).eval(), None
        if self.weights_format == "ts":
            with warnings.catch_warnings():  # TorchScript is the publisher's format; torch marks jit.load deprecated
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location=device).eval(), sha256_file(path)
        network = self.build_network()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
            raise ConfigurationError(f"bundle {self.root.name}: models/{path.name} is not a readable torch "
                                     f"state_dict ({type(exc).__name__}); download it again") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # a CheckpointSaver checkpoint: {"model": ..., "optimizer": ...}
        if isinstance(state, dict) and state and all(str(key).startswith("module.") for key in state):
            state = {str(key)[len("module."):]: value for key, value in state.items()}  # saved from DataParallel
        try:
            network.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            reason = str(exc).splitlines()[0][:200]
            raise ConfigurationError(
                f"bundle {self.root.name}: models/{path.name} does not fit network_def ({reason})") from None
        return network.to(device).eval(), sha256_file(path)
