"""3D segmentation with MONAI bundles (real bundle layout, real UNet, real NIfTI/DICOM) and DICOM series loading."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medagent.config import Settings
from medagent.errors import (
    ChecksumMismatch,
    ConfigurationError,
    ImageInputError,
    ImageTooLarge,
    InvalidToolArguments,
    ModelRetry,
    PreconditionFailed,
    WeightsUnavailable,
)
from medagent.experts.monai_bundle import BundleUnavailable, MonaiBundle
from medagent.experts.volume_geometry import VolumeGrid, run_sliding_window
from medagent.experts.volume_segmentation import VolumeRequest, VolumeSegmentation, VolumeSegmenter
from medagent.imaging import Deidentifier, ImageLimits, ImageLoader
from medagent.imaging.record import ImageRecord
from medagent.imaging.series import list_dicom_series, load_dicom_series
from medagent.runtime.cache import ModelCache
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext
from medagent.tools.volume_tools import volume_tools
from tests.conftest import TEST_SECRET

# small enough for a CPU test, the same class and arguments the spleen bundle uses
NETWORK_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
                "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
ROI = [16, 16, 16]


def write_bundle(root: Path, modality: str, intensity: dict[str, Any], pixdim: list[float], *,
                 weights: bool = True) -> Path:
    """A bundle in the standard layout; models/model.pt is the real state_dict of network_def."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    metadata = {"schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                          "meta_schema_20220324.json",
                "version": "0.3.1", "name": f"Test {modality} spleen", "monai_version": "1.6.1",
                "network_data_format": {
                    "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": modality,
                                         "num_channels": 1, "channel_def": {"0": "image"}}},
                    "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                         "channel_def": {"0": "background", "1": "spleen"}}}}}
    inference = {
        "image_key": "image",
        "displayable_configs": {"sw_overlap": 0.25, "sw_batch_size": 2},
        "network_def": {"_target_": "UNet", **NETWORK_ARGS},
        "network": "$@network_def.to(@device)",
        "device": "$torch.device('cpu')",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": f"${pixdim}", "mode": "bilinear"},
            {"keys": "@image_key", **intensity},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI,
                    "sw_batch_size": "@displayable_configs#sw_batch_size",
                    "overlap": "@displayable_configs#sw_overlap"},
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    if weights:
        import torch
        from monai.networks.nets import UNet

        torch.manual_seed(7)
        torch.save(UNet(**NETWORK_ARGS).state_dict(), root / "models" / "model.pt")  # type: ignore[arg-type]
    return root


MR_INTENSITY = {"_target_": "NormalizeIntensityd", "nonzero": True}
CT_INTENSITY = {"_target_": "ScaleIntensityRanged", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0,
                "clip": True}


@pytest.fixture(scope="module")
def mr_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundles") / "mr_spleen", "MR", MR_INTENSITY, [3.0, 3.0, 3.0])


@pytest.fixture(scope="module")
def mr_segmenter(mr_bundle: Path) -> Iterator[VolumeSegmenter]:
    expert = VolumeSegmenter(mr_bundle, device="cpu", cache=ModelCache(256 * 1024**2))
    yield expert
    expert.close()


@pytest.fixture(scope="module")
def module_loader() -> ImageLoader:
    return ImageLoader(Deidentifier(TEST_SECRET))


@pytest.fixture(scope="module")
def anatomical(nibabel_data: Path, module_loader: ImageLoader) -> ImageRecord:
    return module_loader.load(nibabel_data / "anatomical.nii", modality="MR")  # 33 x 41 x 25, LAS, 2 mm


def write_series(folder: Path, source: Path, count: int, *, gap: float = 2.5, orientation: list[float] | None = None,
                 positions: bool = True, series_uid: str | None = None, skip: int | None = None) -> list[int]:
    """Copies of one real CT slice at shifted positions, written in shuffled file order.

    Slice k (k-th along the normal) gets raw pixels + 10 k and InstanceNumber count - k, so sorting by
    position and sorting by instance number give opposite orders. Returns k in file-name order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(source)
    iop = np.array(orientation or [float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    base = np.array([float(v) for v in template.ImagePositionPatient])
    series_uid = series_uid or generate_uid()
    shuffled = [int(k) for k in np.random.default_rng(3).permutation(count)]
    for file_index, k in enumerate(shuffled):
        dataset = pydicom.dcmread(source)
        step = k + (1 if skip is not None and k >= skip else 0)  # a gap where a slice is missing
        position = base + normal * gap * step
        dataset.ImageOrientationPatient = [float(v) for v in iop]
        dataset.ImagePositionPatient = [float(v) for v in position]
        dataset.SliceLocation = float(np.dot(position, normal))
        dataset.InstanceNumber = count - k
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.PixelData = (dataset.pixel_array.astype(np.int16) + 10 * k).tobytes()
        if not positions:
            del dataset.ImagePositionPatient
            del dataset.SliceLocation
        dataset.save_as(folder / f"IM{file_index:04d}")
    return shuffled


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory, pydicom_ct: Path) -> Path:
    folder = tmp_path_factory.mktemp("series") / "ct"
    write_series(folder, pydicom_ct, 5)
    return folder


# -- DICOM series -----------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [None, [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]], ids=["axial", "sagittal"])
def test_series_sorts_by_position_along_the_normal_and_builds_the_affine(
    tmp_path: Path, pydicom_ct: Path, orientation: list[float] | None
) -> None:
    order = write_series(tmp_path, pydicom_ct, 5, orientation=orientation)
    assert order != sorted(order)  # the file names really are shuffled
    record = load_dicom_series(tmp_path, Deidentifier(TEST_SECRET))
    template = pydicom.dcmread(pydicom_ct)
    hu = template.pixel_array.astype(np.float32) * float(template.RescaleSlope) + float(template.RescaleIntercept)
    assert record.pixels.shape == (5, 128, 128) and record.source_format == "dicom"
    for k in range(5):  # slice k is the k-th position along the normal, whatever the file or instance order
        np.testing.assert_array_equal(record.pixels[k], hu + 10 * k)
    row_mm, col_mm = (float(v) for v in template.PixelSpacing)
    assert record.spacing_mm == pytest.approx((2.5, row_mm, col_mm))
    iop = np.array(orientation or [float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    first = np.array([float(v) for v in template.ImagePositionPatient])
    affine = np.array(record.affine)
    for k, r, c in [(0, 0, 0), (4, 0, 0), (2, 17, 101), (4, 127, 3)]:
        lps = first + normal * 2.5 * k + iop[3:] * row_mm * r + iop[:3] * col_mm * c
        np.testing.assert_allclose(affine @ [k, r, c, 1.0], [-lps[0], -lps[1], lps[2], 1.0], atol=1e-6)
    assert record.orientation == ("SPL" if orientation is None else "RIP")
    assert record.deid is not None and record.metadata.series_uid is not None
    assert record.metadata.series_uid.startswith("2.25.") and record.metadata.number_of_frames == 5


def test_series_without_positions_falls_back_to_instance_number(tmp_path: Path, pydicom_ct: Path) -> None:
    write_series(tmp_path, pydicom_ct, 4, positions=False)
    record = load_dicom_series(tmp_path, Deidentifier(TEST_SECRET))
    offsets = [float(np.median(record.pixels[j] - record.pixels[0])) for j in range(4)]
    assert offsets == [0.0, -10.0, -20.0, -30.0]  # InstanceNumber 1 is the last position: count - k
    assert record.affine is None and record.spacing_mm is not None
    assert record.spacing_mm[0] == pytest.approx(float(pydicom.dcmread(pydicom_ct).SliceThickness))


def test_series_refuses_missing_slices_and_respects_limits(tmp_path: Path, pydicom_ct: Path) -> None:
    write_series(tmp_path / "gap", pydicom_ct, 5, skip=3)
    with pytest.raises(ImageInputError, match="unevenly spaced"):
        load_dicom_series(tmp_path / "gap", Deidentifier(TEST_SECRET))
    write_series(tmp_path / "big", pydicom_ct, 3)
    with pytest.raises(ImageTooLarge):
        load_dicom_series(tmp_path / "big", Deidentifier(TEST_SECRET), ImageLimits(max_pixels=2 * 128 * 128))


def test_series_grouped_by_series_uid(tmp_path: Path, pydicom_ct: Path) -> None:
    write_series(tmp_path, pydicom_ct, 3, series_uid="1.2.3.4.5.1")
    for index in range(2):  # a second, smaller series in the same folder
        dataset = pydicom.dcmread(pydicom_ct)
        dataset.SeriesInstanceUID = "1.2.3.4.5.2"
        dataset.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
        dataset.save_as(tmp_path / f"other{index}")
    (tmp_path / "notes.txt").write_text("not an image")
    deidentifier = Deidentifier(TEST_SECRET)
    listed = list_dicom_series(tmp_path, deidentifier)
    assert [s.images for s in listed] == [3, 2] and all(s.series_uid.startswith("2.25.") for s in listed)
    assert load_dicom_series(tmp_path, deidentifier).pixels.shape[0] == 3
    other = load_dicom_series(tmp_path, deidentifier, series_uid=listed[1].series_uid)
    assert other.pixels.shape[0] == 2 and other.spacing_mm is not None and other.spacing_mm[0] == pytest.approx(5.0)


# -- the bundle -------------------------------------------------------------------------------------


@pytest.mark.torch
def test_bundle_reads_labels_inferer_and_preprocessing_through_monai(mr_bundle: Path, tmp_path: Path) -> None:
    import yaml

    bundle = MonaiBundle(mr_bundle)
    assert bundle.metadata.channel_def == {0: "background", 1: "spleen"}
    assert bundle.metadata.foreground_labels == ["spleen"] and bundle.metadata.input_modality == "MR"
    assert bundle.model_id == "monai-bundle:Test MR spleen@0.3.1"
    window = bundle.sliding_window()  # sw_batch_size and overlap are @ references, resolved by ConfigParser
    assert window is not None and window.roi_size == (16, 16, 16)
    assert (window.sw_batch_size, window.overlap) == (2, 0.25)
    plan = bundle.preprocessing()
    assert [step.kind for step in plan.steps] == ["orientation", "spacing", "intensity"]
    assert plan.steps[1].pixdim == (3.0, 3.0, 3.0)  # a "$" expression, evaluated by ConfigParser
    assert plan.skipped == ["LoadImaged", "EnsureChannelFirstd"]
    as_yaml = tmp_path / "yaml_bundle"  # bundles may ship configs/inference.yaml instead
    shutil.copytree(mr_bundle, as_yaml)
    config = json.loads((as_yaml / "configs" / "inference.json").read_text())
    config["inferer"]["roi_size"] = [32, 32, 16]
    (as_yaml / "configs" / "inference.json").unlink()
    (as_yaml / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    assert MonaiBundle(as_yaml).sliding_window().roi_size == (32, 32, 16)  # type: ignore[union-attr]


@pytest.mark.torch
def test_weights_present_load_the_saved_state_dict(mr_bundle: Path, tmp_path: Path) -> None:
    import torch

    network, sha256 = MonaiBundle(mr_bundle).load_network("cpu", "volume_segmenter")
    saved = torch.load(mr_bundle / "models" / "model.pt", weights_only=True)
    assert sha256 == hashlib.sha256((mr_bundle / "models" / "model.pt").read_bytes()).hexdigest()
    for key, value in network.state_dict().items():
        assert torch.equal(value, saved[key]), key
    with pytest.raises(ChecksumMismatch):  # a wrong file never falls back to random weights
        MonaiBundle(mr_bundle, expected_sha256="0" * 64).load_network("cpu", "x", allow_untrained=True)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(mr_bundle, corrupt)
    (corrupt / "models" / "model.pt").write_bytes(b"not a state dict" * 8)
    with pytest.raises(ConfigurationError, match="models/model.pt"):
        MonaiBundle(corrupt).load_network("cpu", "x", allow_untrained=True)


def test_missing_weights_and_missing_bundle_name_what_to_install(tmp_path: Path, settings: Settings) -> None:
    root = write_bundle(settings.home / "bundles" / "spleen_ct_segmentation", "CT", CT_INTENSITY, [1.5, 1.5, 2.0],
                        weights=False)
    segmenter = VolumeSegmenter.from_settings(settings)  # <home>/bundles/<bundle_name>/ by default
    assert segmenter.bundle.root == root and segmenter.labels() == ["spleen"]
    assert not segmenter.ready() and segmenter.weights_status().expected_path == str(root / "models" / "model.pt")
    with pytest.raises(WeightsUnavailable, match=re.escape(str(root / "models" / "model.pt"))):
        MonaiBundle(root).require_weights("volume_segmenter")
    absent = tmp_path / "bundles" / "wholeBody_ct_segmentation"
    with pytest.raises(BundleUnavailable, match=re.escape(str(absent))):
        MonaiBundle(absent).metadata  # noqa: B018


# -- inference --------------------------------------------------------------------------------------


def _decoded_mask(result: VolumeSegmentation) -> Any:
    import nibabel as nib

    return nib.Nifti1Image.from_bytes(gzip.decompress(result.mask_nifti_gz()))


@pytest.mark.torch
@pytest.mark.asyncio
async def test_sliding_window_mask_keeps_the_input_affine_shape_and_real_volumes(
    mr_segmenter: VolumeSegmenter, anatomical: ImageRecord, nibabel_data: Path
) -> None:
    import cv2
    import nibabel as nib

    result = await mr_segmenter(VolumeRequest(image=anatomical))
    mask = _decoded_mask(result)
    source = nib.load(nibabel_data / "anatomical.nii")
    assert np.array_equal(mask.affine, source.affine) and mask.shape == source.shape == tuple(result.shape)
    assert result.windows > 1 and result.network_grid == [22, 27, 17]  # LAS 2 mm -> RAS 3 mm
    assert result.provenance.untrained is False and "UNTRAINED" not in result.summary_text()
    labels = np.asarray(mask.dataobj)
    voxel_mm3 = float(np.prod(anatomical.spacing_mm))  # type: ignore[arg-type]
    (spleen,) = result.labels
    assert spleen.voxels == int(np.count_nonzero(labels == spleen.value))
    assert spleen.volume_ml == pytest.approx(spleen.voxels * voxel_mm3 / 1000.0)
    for label, index, png in result.overlay_pngs():
        areas = (labels == spleen.value).sum(axis=(0, 1))  # slice_axis 2: the S axis of an LAS volume
        assert label == "spleen" and index == int(np.argmax(areas)) and result.slice_axis == 2
        assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3


class _BrightVoxels:
    """Stands in for the network to test geometry: channel 1 wins wherever the preprocessed voxel is above 0."""

    def __call__(self, batch: Any) -> Any:
        import torch

        return torch.cat([-batch, batch], dim=1)


@pytest.mark.torch
def test_reorientation_and_resampling_return_the_labels_to_the_input_grid(mr_bundle: Path,
                                                                           anatomical: ImageRecord) -> None:
    from medagent.experts.monai_bundle import SlidingWindowConfig

    bundle = MonaiBundle(mr_bundle)
    plan = bundle.preprocessing()
    transforms = {step.config_id: bundle.intensity_transform(step) for step in plan.steps if step.kind == "intensity"}
    grid = VolumeGrid.from_record(anatomical)
    pixels = anatomical.pixels
    nonzero = pixels[pixels != 0]
    expected = (pixels != 0) & (pixels > nonzero.mean())  # NormalizeIntensityd(nonzero=True), then > 0
    window = SlidingWindowConfig(roi_size=(16, 16, 16), overlap=0.25)
    exact = plan.model_copy(update={"steps": [s for s in plan.steps if s.kind != "spacing"]})
    run = run_sliding_window(pixels, grid, exact, transforms, _BrightVoxels(), window, "cpu")
    np.testing.assert_array_equal(run.label_map == 1, expected)  # reorientation alone is lossless
    resampled = run_sliding_window(pixels, grid, plan, transforms, _BrightVoxels(), window, "cpu")
    assert resampled.label_map.shape == pixels.shape
    assert float(np.mean((resampled.label_map == 1) == expected)) > 0.85  # 3 mm resampling blurs borders only


@pytest.mark.torch
@pytest.mark.asyncio
async def test_torchscript_model_ts_gives_the_same_mask(mr_bundle: Path, mr_segmenter: VolumeSegmenter,
                                                        anatomical: ImageRecord, tmp_path: Path) -> None:
    import torch

    root = tmp_path / "bundle_ts"
    shutil.copytree(mr_bundle, root)
    network, _ = MonaiBundle(root).load_network("cpu", "test")
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; model.ts is still how bundles ship it
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(network, torch.zeros(1, 1, *ROI)), str(root / "models" / "model.ts"))
    (root / "models" / "model.pt").unlink()
    scripted = VolumeSegmenter(root, weights_format="ts", device="cpu", cache=ModelCache(256 * 1024**2))
    try:
        from_ts, from_pt = await scripted(VolumeRequest(image=anatomical)), await mr_segmenter(
            VolumeRequest(image=anatomical))
    finally:
        scripted.close()
    assert np.array_equal(np.asarray(_decoded_mask(from_ts).dataobj), np.asarray(_decoded_mask(from_pt).dataobj))
    assert from_ts.provenance.weights_sha256 == hashlib.sha256((root / "models" / "model.ts").read_bytes()).hexdigest()


@pytest.mark.torch
@pytest.mark.asyncio
async def test_untrained_switch_marks_results_and_invalid_labels_list_the_valid_ones(
    tmp_path: Path, anatomical: ImageRecord
) -> None:
    root = write_bundle(tmp_path / "mr_no_weights", "MR", MR_INTENSITY, [4.0, 4.0, 4.0], weights=False)
    strict = VolumeSegmenter(root, device="cpu", cache=ModelCache(10**8))
    try:
        with pytest.raises(WeightsUnavailable, match=re.escape(str(root / "models" / "model.pt"))):
            await strict(VolumeRequest(image=anatomical))
    finally:
        strict.close()
    segmenter = VolumeSegmenter(root, allow_untrained_test_only=True, device="cpu", cache=ModelCache(10**8))
    try:
        assert segmenter.ready()
        result = await segmenter(VolumeRequest(image=anatomical, labels=["spleen"]))
        assert result.provenance.untrained is True and result.provenance.weights_sha256 is None
        assert "UNTRAINED" in result.summary_text()
        with pytest.raises(InvalidToolArguments, match="valid labels: spleen") as raised:
            await segmenter(VolumeRequest(image=anatomical, labels=["liver"]))
        assert isinstance(raised.value, ModelRetry)
    finally:
        segmenter.close()


# -- the tool ---------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.asyncio
async def test_segment_volume_tool_on_a_dicom_series_stores_the_nifti_mask_and_overlays(
    tmp_path: Path, ct_series: Path, pydicom_ct: Path, module_loader: ImageLoader, anatomical: ImageRecord
) -> None:
    import nibabel as nib

    root = write_bundle(tmp_path / "spleen_ct_segmentation", "CT", CT_INTENSITY, [2.0, 2.0, 2.0])
    segmenter = VolumeSegmenter(root, device="cpu", cache=ModelCache(256 * 1024**2))
    store = ArtifactStore(tmp_path / "artifacts")
    volume = load_dicom_series(ct_series, Deidentifier(TEST_SECRET))
    volume_id = store.put_image(volume).id
    slice_id = store.put_image(module_loader.load(pydicom_ct)).id
    mr_id = store.put_image(anatomical).id
    context = ToolContext(artifacts=store, image_ids=[volume_id, slice_id, mr_id])
    registry = ToolRegistry(volume_tools(segmenter))
    try:
        result = await registry.call("segment_volume", {"image_id": volume_id}, context)
        with pytest.raises(PreconditionFailed, match="3D"):
            await registry.call("segment_volume", {"image_id": slice_id}, context)  # one CT slice: 2D
        with pytest.raises(PreconditionFailed, match="reads CT"):
            await registry.call("segment_volume", {"image_id": mr_id}, context)
        with pytest.raises(InvalidToolArguments, match="spleen"):
            await registry.call("segment_volume", {"image_id": volume_id, "labels": ["kidney"]}, context)
    finally:
        segmenter.close()
    assert isinstance(result, VolumeSegmentation) and result.mask_id is not None
    mask_artifact = store.get(result.mask_id)
    assert mask_artifact.kind is ArtifactKind.MASK and mask_artifact.path.name.endswith(".nii.gz")
    mask = nib.load(mask_artifact.path)
    assert mask.shape == volume.pixels.shape == (5, 128, 128)
    np.testing.assert_allclose(mask.affine, np.array(volume.affine), atol=1e-4)  # float32 in the NIfTI header
    labels = np.asarray(mask.dataobj)
    assert [item.voxels for item in result.labels] == [int(np.count_nonzero(labels == 1))]
    expected_ml = result.labels[0].voxels * float(np.prod(volume.spacing_mm)) / 1000.0  # type: ignore[arg-type]
    assert result.labels[0].volume_ml == pytest.approx(expected_ml)
    assert result.slice_axis == 0 and result.windows > 1
    assert len(result.overlay_ids) == (1 if result.labels[0].voxels else 0)
    for overlay_id in result.overlay_ids:
        overlay = store.get(overlay_id)
        assert overlay.kind is ArtifactKind.OVERLAY and store.read_bytes(overlay_id).startswith(b"\x89PNG")
