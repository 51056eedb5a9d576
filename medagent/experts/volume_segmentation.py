"""3D CT/MR segmentation with a MONAI bundle: sliding-window inference, mask back on the input grid.

Intensities: the network reads ``ImageRecord.pixels``, which hold modality units (HU for CT after
rescale slope/intercept, raw scanner values for MR), never the display-normalised [0, 1] view; the
bundle's own intensity transforms (e.g. ScaleIntensityRanged -57..164 HU for the spleen bundle) are
then applied exactly as MONAI implements them. Geometry: the volume is reoriented to the bundle's
axcodes and resampled to its pixdim when the bundle says so; the predicted label map is taken back
(nearest neighbour, then the inverse reorientation) to the input voxel grid, so the NIfTI mask carries
the input's own affine. Volumes in ml use the record's real spacing and are None when it is unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import ConfigurationError, InvalidToolArguments, MedagentError, PreconditionFailed
from medagent.experts.monai_bundle import MonaiBundle, SlidingWindowConfig, WeightsFormat
from medagent.experts.volume_geometry import (
    VolumeGrid,
    label_statistics,
    mask_nifti_gz,
    render_overlays,
    run_sliding_window,
)
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.cache import torch_module_bytes
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import ExpertResult, Provenance

NIFTI_MEDIA_TYPE = "application/gzip"


class VolumeRequest(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: ImageRecord = Field(description="a 3D CT or MR volume")
    labels: list[str] | None = Field(default=None, description="only these bundle labels; None for all")


class LabelVolume(BaseModel):
    label: str
    value: int = Field(description="voxel value of this label in the NIfTI mask")
    voxels: int
    volume_ml: float | None = Field(description="voxels x voxel volume / 1000; None when the spacing is unknown")
    largest_slice: int | None = Field(default=None, description="slice (along slice_axis) with the largest area")


class VolumeSegmentation(ExpertResult):
    bundle: str
    labels: list[LabelVolume]
    shape: list[int] = Field(description="input voxel grid; the mask has exactly this shape and affine")
    spacing_mm: list[float] | None
    voxel_volume_mm3: float | None
    slice_axis: int = Field(description="voxel axis closest to the patient's head-foot axis (overlay slices)")
    roi_size: list[int]
    overlap: float
    sw_batch_size: int
    windows: int = Field(description="sliding windows the network ran on")
    network_grid: list[int] = Field(description="voxel grid the network saw, after reorientation and resampling")
    preprocessing: list[str] = Field(description="steps applied, in the bundle's order")
    skipped_transforms: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    mask_id: str | None = None
    overlay_ids: list[str] = Field(default_factory=list)
    _mask_nifti: bytes = PrivateAttr(default=b"")
    _overlays: list[tuple[str, int, bytes]] = PrivateAttr(default_factory=list)

    def mask_nifti_gz(self) -> bytes:
        """The label map as .nii.gz with the input's affine (values as in ``labels[*].value``)."""
        return self._mask_nifti

    def overlay_pngs(self) -> list[tuple[str, int, bytes]]:
        """(label, slice index, PNG) for the slice where each label's area is largest."""
        return list(self._overlays)

    def summary_text(self) -> str:
        marker = " (UNTRAINED test weights: meaningless)" if self.provenance.untrained else ""
        parts = []
        for item in self.labels:
            if item.voxels == 0:
                parts.append(f"{item.label} not found")
            elif item.volume_ml is None:
                parts.append(f"{item.label} {item.voxels} voxels (spacing unknown)")
            else:
                parts.append(f"{item.label} {item.volume_ml:.1f} ml ({item.voxels} voxels)")
        return f"3D segmentation {self.provenance.model_id}{marker}: {'; '.join(parts) or 'no labels'}."


def _modality(value: str | None) -> Modality | None:
    if not value:
        return None
    return Modality.MR if value.strip().upper() in ("MRI", "MR") else Modality.parse(value)


class VolumeSegmenter(Expert[VolumeRequest, VolumeSegmentation]):
    name = "volume_segmenter"
    batchable = False  # one volume already fills the sliding-window batches
    card = ModelCard(
        summary=("Segments structures in a 3D CT or MR volume with a MONAI Model Zoo bundle (labels from the "
                 "bundle's metadata) and reports each structure's volume in ml, a NIfTI mask and slice overlays."),
        modalities=[Modality.CT, Modality.MR],
        dimensionality=[3],
        performance="As published in the bundle's README/metadata (e.g. spleen_ct_segmentation: mean Dice 0.96).",
        limitations=["3D volumes only (a DICOM series or a NIfTI file)", "the bundle's modality only",
                     "accuracy outside the bundle's training data is unknown"],
        references=["https://monai.io/model-zoo.html", "https://github.com/Project-MONAI/model-zoo"],
    )

    def __init__(self, bundle_dir: Path, *, roi_size: tuple[int, int, int] | None = None,
                 overlap: float | None = None, sw_batch_size: int | None = None, expected_sha256: str | None = None,
                 weights_format: WeightsFormat = "pt", allow_untrained_test_only: bool = False,
                 max_overlays: int = 8, **runtime: Any) -> None:
        super().__init__(**runtime)
        self.bundle = MonaiBundle(bundle_dir, expected_sha256=expected_sha256, weights_format=weights_format)
        self.overrides = {"roi_size": tuple(roi_size) if roi_size else None, "overlap": overlap,
                          "sw_batch_size": sw_batch_size}
        self.allow_untrained = allow_untrained_test_only
        self.max_overlays = max_overlays

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> VolumeSegmenter:
        """The bundle named by ``settings.volume_bundle`` under ``settings.bundles_dir`` (default <home>/bundles)."""
        return cls(settings.bundle_dir, device=settings.device,
                   allow_untrained_test_only=settings.allow_untrained_test_only, **options)

    @property
    def cache_key(self) -> str:
        return (f"{self.name}:{self.bundle.root}:{self.bundle.weights_format}:{self.bundle.expected_sha256}:"
                f"{self.overrides}:{self.device}:{self.allow_untrained}")

    def weights_status(self) -> WeightsStatus:
        expected = self.bundle.weights_dir / self.bundle.weights_file().file_name
        return WeightsStatus(present=expected.is_file(), path=str(expected) if expected.is_file() else None,
                             expected_path=str(expected))

    def ready(self) -> bool:
        if self.allow_untrained:
            return (self.bundle.root / "configs").is_dir()
        return (self.bundle.weights_dir / self.bundle.weights_file().file_name).is_file()

    def labels(self) -> list[str]:
        return self.bundle.metadata.foreground_labels

    def check_labels(self, requested: list[str] | None) -> list[str]:
        """The labels to report in the bundle's order; a planner mistake raises a retry naming the valid ones."""
        valid = self.labels()
        if requested is None:
            return valid
        unknown = [name for name in requested if name not in valid]
        if not requested or unknown:
            problem = "`labels` is empty" if not requested else f"unknown label(s) {', '.join(map(repr, unknown[:5]))}"
            raise InvalidToolArguments(f"{problem}; valid labels: {', '.join(valid)}", tool=self.name, valid=valid)
        return [name for name in valid if name in set(requested)]

    def check_image(self, image: ImageRecord) -> None:
        self.card.check_image(image, self.name)
        expected = _modality(self.bundle.metadata.input_modality)
        if expected is not None and image.modality is not expected:
            raise PreconditionFailed(f"bundle {self.bundle.metadata.name} reads {expected.value} volumes; "
                                     f"this image is {image.modality.value}", tool=self.name)

    def sliding_window(self) -> SlidingWindowConfig:
        base = self.bundle.sliding_window()
        roi = self.overrides["roi_size"] or (base.roi_size if base else None)
        if roi is None:
            raise ConfigurationError(f"bundle {self.bundle.root.name} declares no SlidingWindowInferer: give roi_size")
        merged = (base or SlidingWindowConfig(roi_size=roi)).model_dump()
        merged.update({key: value for key, value in self.overrides.items() if value is not None})
        return SlidingWindowConfig.model_validate(merged)

    def load(self, device: str) -> LoadedModel:
        import monai
        import torch

        metadata = self.bundle.metadata
        network, sha256 = self.bundle.load_network(device, self.name, allow_untrained=self.allow_untrained)
        plan = self.bundle.preprocessing()
        transforms = {step.config_id: self.bundle.intensity_transform(step)
                      for step in plan.steps if step.kind == "intensity"}
        provenance = Provenance(expert=self.name, model_id=self.bundle.model_id, weights_sha256=sha256, device=device,
                                untrained=sha256 is None,
                                library_versions={"monai": monai.__version__, "torch": torch.__version__})
        state = {"network": network, "plan": plan, "transforms": transforms, "window": self.sliding_window(),
                 "channel_def": metadata.channel_def}
        size = torch_module_bytes(network) if isinstance(network, torch.nn.Module) else 0
        return LoadedModel(model=state, provenance=provenance, size_bytes=size)

    def predict_batch(self, loaded: LoadedModel,
                      items: list[VolumeRequest]) -> list[VolumeSegmentation | BaseException]:
        results: list[VolumeSegmentation | BaseException] = []
        for request in items:
            try:
                results.append(self._segment(loaded, request))
            except MedagentError as exc:  # a refused volume fails alone; crashes and OOM go to the runtime's mapping
                results.append(exc)
        return results

    def _segment(self, loaded: LoadedModel, request: VolumeRequest) -> VolumeSegmentation:
        self.check_image(request.image)
        wanted = self.check_labels(request.labels)
        state = loaded.model
        grid = VolumeGrid.from_record(request.image)
        window: SlidingWindowConfig = state["window"]
        run = run_sliding_window(request.image.pixels, grid, state["plan"], state["transforms"], state["network"],
                                 window, loaded.provenance.device, out_channels=len(state["channel_def"]))
        values = {value: label for value, label in run.value_labels(state["channel_def"]).items() if label in wanted}
        label_map = np.where(np.isin(run.label_map, list(values)), run.label_map, 0).astype(run.label_map.dtype)
        counts, largest = label_statistics(label_map, grid.slice_axis, max(values, default=0) + 1)
        volumes = [LabelVolume(label=label, value=value, voxels=int(counts[value]),
                               volume_ml=None if grid.voxel_volume_mm3 is None
                               else float(counts[value]) * grid.voxel_volume_mm3 / 1000.0,
                               largest_slice=int(largest[value]) if counts[value] else None)
                   for value, label in sorted(values.items())]
        result = VolumeSegmentation(
            provenance=loaded.provenance, bundle=self.bundle.metadata.name, labels=volumes,
            shape=list(label_map.shape), spacing_mm=list(grid.spacing) if grid.spacing else None,
            voxel_volume_mm3=grid.voxel_volume_mm3, slice_axis=grid.slice_axis, roi_size=list(window.roi_size),
            overlap=window.overlap, sw_batch_size=window.sw_batch_size, windows=run.windows,
            network_grid=list(run.network_shape), preprocessing=run.applied,
            skipped_transforms=state["plan"].skipped, notes=[*grid.notes, *run.notes],
        )
        shown = sorted((v for v in volumes if v.voxels), key=lambda v: -v.voxels)[: self.max_overlays]
        result._overlays = render_overlays(request.image, label_map, grid.slice_axis,
                                           [(v.label, v.value, int(v.largest_slice or 0)) for v in shown],
                                           [(v.label, v.value) for v in volumes])
        result._mask_nifti = mask_nifti_gz(label_map, grid.affine, self.bundle.model_id)
        return result
