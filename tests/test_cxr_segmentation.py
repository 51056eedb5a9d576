"""Chest X-ray segmentation: the real PSPNet architecture, the classical lung fields, measurements and tools."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.errors import InvalidToolArguments, ModelRetry, PreconditionFailed, WeightsUnavailable
from medagent.experts.cxr_anatomy import STRUCTURES, WEIGHTS_FILE, CxrAnatomySegmenter
from medagent.experts.lung_fields import LungFieldSegmenter
from medagent.experts.segmentation import HEART, LEFT_LUNG, RIGHT_LUNG, Segmentation, cardiothoracic_ratio
from medagent.imaging import ImageLoader
from medagent.imaging.mask_overlay import MASK_COLOURS, masks_overlay_png
from medagent.imaging.record import ImageRecord
from medagent.runtime.cache import ModelCache
from medagent.runtime.expert import LoadedModel
from medagent.runtime.weights import sha256_file
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from medagent.tools.builtin import Toolbox
from medagent.tools.registry import ToolRegistry
from medagent.tools.segmentation_tools import segmentation_tools
from medagent.tools.spec import ToolContext
from tests.dicom_files import cr_dicom

SPACING = (0.2, 0.143)


@pytest.fixture(scope="module")
def untrained_anatomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CxrAnatomySegmenter]:
    expert = CxrAnatomySegmenter(cache_dir=tmp_path_factory.mktemp("no-weights"), allow_untrained_test_only=True,
                                 cache=ModelCache(2 * 1024**3), max_wait_ms=100)
    yield expert
    expert.close()


@pytest.fixture(scope="module")
def lung_fields() -> Iterator[LungFieldSegmenter]:
    expert = LungFieldSegmenter(cache=ModelCache(1024**2))
    yield expert
    expert.close()


def _with(record: ImageRecord, **update: Any) -> ImageRecord:
    return record.model_copy(update=update)


# -- the learned PSPNet ------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.asyncio
async def test_untrained_pspnet_runs_one_batch_and_reports_masks_in_the_input_grid(
    untrained_anatomy: CxrAnatomySegmenter, loader: ImageLoader, nih_images: list[Path]
) -> None:
    from torchxrayvision.baseline_models.chestx_det import PSPNet

    full = loader.load(nih_images[0], modality="DX")
    other = loader.load(nih_images[1], modality="DX")
    cropped = _with(other, pixels=np.ascontiguousarray(other.pixels[30:470, 10:490]))  # 440 x 480, not square
    results = await asyncio.gather(untrained_anatomy(full), untrained_anatomy(cropped))
    assert max(untrained_anatomy.batch_sizes) == 2  # both images went through one forward pass
    for result, record in zip(results, (full, cropped), strict=True):
        assert result.labels() == list(PSPNet.targets) == STRUCTURES
        assert result.provenance.untrained is True and result.provenance.weights_sha256 is None
        assert "UNTRAINED" in result.summary_text()
        assert (result.image_height, result.image_width) == record.pixels.shape
        assert result.model_resolution == 512 and not result.spacing_known
        for label, mask in result.masks.items():
            assert mask.shape == record.pixels.shape and mask.dtype == bool
            assert result.structure(label).area_px == int(mask.sum())
            assert result.structure(label).area_mm2 is None


class _BrightnessNetwork:
    """Stands in for the network to test geometry: every channel's logit says 'this pixel is bright'."""

    def __call__(self, batch: Any) -> Any:
        grey = batch[:, :1] * 0.229 + 0.485  # undo the ImageNet normalisation of channel 0
        return ((grey - 0.5) * 50.0).repeat(1, len(STRUCTURES), 1, 1)


@pytest.mark.torch
def test_padding_and_resizing_map_the_output_back_onto_the_input_pixels(loader: ImageLoader,
                                                                        nih_images: list[Path]) -> None:
    from medagent.runtime.results import Provenance

    record = loader.load(nih_images[0], modality="DX")
    wide = _with(record, pixels=np.ascontiguousarray(record.pixels[100:400, :]))  # 300 x 512: padded top and bottom
    expert = CxrAnatomySegmenter(allow_untrained_test_only=True)
    loaded = LoadedModel(model={"network": _BrightnessNetwork(), "labels": STRUCTURES},
                         provenance=Provenance(expert=expert.name, model_id="geometry-check", untrained=True))
    (result,) = expert.predict_batch(loaded, [wide])
    assert isinstance(result, Segmentation)
    expected = wide.as_2d() >= 0.5
    mask = result.masks[HEART]
    assert mask.shape == (300, 512)
    agreement = (mask & expected).sum() / (mask | expected).sum()
    assert agreement > 0.9, agreement  # a shifted or stretched mask would disagree badly


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_random_network_saved_in_the_publishers_file_layout_loads(tmp_path: Path, loader: ImageLoader,
                                                                          nih_images: list[Path]) -> None:
    """Not the published weights: a randomly initialised PSPNet saved under the publisher's file name and
    key layout, which proves the loading path (and hashing), not the network's quality."""
    import torch
    from torchxrayvision.baseline_models.chestx_det import pspnet

    torch.manual_seed(7)
    saved = pspnet(len(STRUCTURES))
    # the published file comes from nn.DataParallel: every key carries a "module." prefix
    torch.save({f"module.{key}": value for key, value in saved.state_dict().items()}, tmp_path / WEIGHTS_FILE)
    expert = CxrAnatomySegmenter(cache_dir=tmp_path, cache=ModelCache(2 * 1024**3))
    assert expert.ready() and expert.weights_status().present
    result = await expert(loader.load(nih_images[1], modality="DX"))
    assert result.provenance.untrained is False
    assert result.provenance.weights_sha256 == sha256_file(tmp_path / WEIGHTS_FILE)
    assert "UNTRAINED" not in result.summary_text()
    loaded_state = expert.loaded().model["network"].state_dict()
    assert all(torch.equal(loaded_state[key], value) for key, value in saved.state_dict().items())
    expert.close()


@pytest.mark.torch
@pytest.mark.asyncio
async def test_missing_weights_name_the_file_and_the_folder(tmp_path: Path, loader: ImageLoader,
                                                            nih_images: list[Path]) -> None:
    expert = CxrAnatomySegmenter(cache_dir=tmp_path / "xrv", cache=ModelCache(1024**2))
    assert not expert.ready()
    assert expert.weights_status().expected_path == str(tmp_path / "xrv" / WEIGHTS_FILE)
    with pytest.raises(WeightsUnavailable) as caught:
        await expert(loader.load(nih_images[0], modality="DX"))
    assert WEIGHTS_FILE in caught.value.message and str(tmp_path / "xrv") in caught.value.message
    assert caught.value.details["url"].endswith("/" + WEIGHTS_FILE)
    expert.close()


# -- classical lung fields and measurements ----------------------------------------------------------


@pytest.mark.asyncio
async def test_lung_fields_are_plausible_on_both_radiographs(lung_fields: LungFieldSegmenter, loader: ImageLoader,
                                                             nih_images: list[Path]) -> None:
    from scipy import ndimage

    for path in nih_images:
        result = await lung_fields(loader.load(path, modality="DX"))
        assert result.labels() == [RIGHT_LUNG, LEFT_LUNG] and result.provenance.weights_sha256 is None
        masks, width = result.masks, result.image_width
        assert not (masks[RIGHT_LUNG] & masks[LEFT_LUNG]).any()
        for label, mask in masks.items():
            assert ndimage.label(mask)[1] == 1  # one connected field per side
            assert 0.05 < mask.mean() < 0.40, (label, mask.mean())
        right, left = result.structure(RIGHT_LUNG), result.structure(LEFT_LUNG)
        assert right.box is not None and left.box is not None and right.centroid and left.centroid
        # PA view: the patient's right lung lies in the image's left half
        assert right.box.x1 <= width * 0.55 and right.centroid[1] < width / 2
        assert left.box.x0 >= width * 0.45 and left.centroid[1] > width / 2
        # both fields span most of the thorax height
        assert right.box.y1 - right.box.y0 > 0.4 * result.image_height


@pytest.mark.asyncio
async def test_areas_use_the_real_pixel_spacing_at_any_resolution(lung_fields: LungFieldSegmenter,
                                                                  loader: ImageLoader, nih_images: list[Path]) -> None:
    import cv2

    record = loader.load(nih_images[1], modality="DX")
    unknown = await lung_fields(record)
    assert all(s.area_mm2 is None for s in unknown.structures) and not unknown.spacing_known
    assert "pixels only" in unknown.summary_text()
    known = await lung_fields(_with(record, spacing_mm=SPACING))
    for structure in known.structures:
        assert structure.area_mm2 == pytest.approx(structure.area_px * SPACING[0] * SPACING[1], abs=0.01)
        assert structure.box is not None
        assert structure.box.width_mm == pytest.approx((structure.box.x1 - structure.box.x0) * SPACING[1], abs=0.01)
        assert structure.box.height_mm == pytest.approx((structure.box.y1 - structure.box.y0) * SPACING[0], abs=0.01)
    # the same film digitised at twice the resolution (half the spacing) covers the same square millimetres
    doubled = cv2.resize(record.pixels, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    fine = await lung_fields(_with(record, pixels=doubled, spacing_mm=(SPACING[0] / 2, SPACING[1] / 2)))
    assert fine.structure(RIGHT_LUNG).area_px > 3.5 * known.structure(RIGHT_LUNG).area_px
    for label in (RIGHT_LUNG, LEFT_LUNG):
        coarse_mm2, fine_mm2 = known.structure(label).area_mm2, fine.structure(label).area_mm2
        assert coarse_mm2 and fine_mm2 and fine_mm2 == pytest.approx(coarse_mm2, rel=0.03)


def test_cardiothoracic_ratio_on_masks_built_with_a_known_answer() -> None:
    shape = (100, 120)
    right, left, heart = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    right[20:80, 10:40] = True   # image-left field, outer border at column 10
    left[30:90, 80:105] = True   # image-right field, outer border at column 104
    for row in range(40, 70):    # a heart that widens downwards: widest row is 69, 2 * 29 + 2 = 60 px
        half = row - 40
        heart[row, 60 - half - 1: 60 + half + 1] = True
    ratio = cardiothoracic_ratio(heart, [right, left], col_mm=0.5)
    assert ratio is not None
    assert (ratio.heart_width_px, ratio.thoracic_width_px) == (60, 95)  # thorax: columns 10..104
    assert ratio.heart_row == 69 and 30 <= ratio.thoracic_row < 80
    assert ratio.ratio == pytest.approx(60 / 95, abs=1e-3)
    assert (ratio.heart_width_mm, ratio.thoracic_width_mm) == (30.0, 47.5)
    assert cardiothoracic_ratio(heart, [right, left]).thoracic_width_mm is None  # type: ignore[union-attr]
    assert cardiothoracic_ratio(heart, [right, np.zeros(shape, bool)]) is None
    lower = np.zeros(shape, bool)
    lower[85:95, 80:105] = True  # no row holds both lungs: no thoracic width
    assert cardiothoracic_ratio(heart, [right, lower]) is None


@pytest.mark.asyncio
async def test_cardiothoracic_ratio_from_lung_fields_and_a_heart_mask(
    lung_fields: LungFieldSegmenter, loader: ImageLoader, nih_images: list[Path]
) -> None:
    record = _with(loader.load(nih_images[0], modality="DX"), spacing_mm=SPACING)
    fields = await lung_fields(record)
    assert fields.cardiothoracic_ratio is None  # no heart mask from this segmenter
    heart = np.zeros(record.pixels.shape, bool)
    heart[260:380, 190:370] = True  # 180 px wide, between and below the hila
    masks = {**fields.masks, HEART: heart}
    combined = Segmentation.from_masks(masks, record, fields.provenance, "lung fields + heart")
    ratio = combined.cardiothoracic_ratio
    assert ratio is not None and ratio.heart_width_px == 180
    union = fields.masks[RIGHT_LUNG] | fields.masks[LEFT_LUNG]
    columns = np.nonzero(union.any(axis=0))[0]
    assert 0.6 * (columns[-1] - columns[0] + 1) < ratio.thoracic_width_px <= columns[-1] - columns[0] + 1
    assert ratio.ratio == pytest.approx(180 / ratio.thoracic_width_px, abs=1e-3)
    assert ratio.thoracic_width_mm == pytest.approx(ratio.thoracic_width_px * SPACING[1], abs=0.1)
    assert "Cardiothoracic ratio" in combined.summary_text()
    assert combined.restricted_to([HEART]).cardiothoracic_ratio is None


def test_overlay_tints_each_mask_and_draws_a_legend() -> None:
    image = np.tile(np.linspace(0.2, 0.8, 300, dtype=np.float32), (200, 1))
    first, second = np.zeros((200, 300), bool), np.zeros((200, 300), bool)
    first[120:180, 40:100], second[120:180, 200:260] = True, True
    png = masks_overlay_png(image, {"Heart": first, "Aorta": second, "Spine": np.zeros((200, 300), bool)})
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (300, 200)
    rgb = np.asarray(picture.convert("RGB")).astype(float)
    for column, colour in ((70, MASK_COLOURS[0]), (230, MASK_COLOURS[1])):
        grey = image[150, column] * 255.0
        expected = 0.6 * grey + 0.4 * np.array(colour, dtype=float)
        assert np.abs(rgb[150, column] - expected).max() <= 1.5
    assert len(set(rgb[190, 150])) == 1  # outside every mask the image stays grey
    legend = rgb[:60, :150].reshape(-1, 3)
    for colour in MASK_COLOURS[:3]:  # a swatch per label, the empty one included
        assert (legend == np.array(colour)).all(axis=1).any()


# -- the tools ------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.asyncio
async def test_tools_store_masks_and_overlays(tmp_path: Path, untrained_anatomy: CxrAnatomySegmenter,
                                             lung_fields: LungFieldSegmenter, loader: ImageLoader,
                                             nih_images: list[Path], pydicom_ct: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    image_id = store.put_image(loader.load(nih_images[0], modality="DX")).id
    ct_id = store.put_image(loader.load(pydicom_ct)).id
    context = ToolContext(artifacts=store, image_ids=[image_id, ct_id])
    registry = ToolRegistry(segmentation_tools(untrained_anatomy, lung_fields))
    assert registry.names() == ["segment_chest_anatomy", "segment_lung_fields"]

    fields = await registry.call("segment_lung_fields", {"image_id": image_id}, context)
    anatomy = await registry.call("segment_chest_anatomy",
                                  {"image_id": image_id, "structures": ["Right Lung", "Heart", "Left Lung"]}, context)
    for result in (fields, anatomy):
        assert isinstance(result, Segmentation) and result.mask_id and result.overlay_id
        mask_artifact = store.get(result.mask_id)
        assert mask_artifact.kind is ArtifactKind.MASK
        with np.load(io.BytesIO(store.read_bytes(result.mask_id)), allow_pickle=False) as stored:
            assert sorted(stored.files) == sorted(result.labels())
            for label, mask in result.masks.items():
                assert stored[label].dtype == bool and np.array_equal(stored[label], mask)
        overlay = Image.open(io.BytesIO(store.read_bytes(result.overlay_id)))
        assert store.get(result.overlay_id).kind is ArtifactKind.OVERLAY
        assert overlay.format == "PNG" and overlay.size == (512, 512)
    assert anatomy.labels() == ["Left Lung", "Right Lung", "Heart"]  # the model's order, whatever was asked
    assert anatomy.cardiothoracic_ratio is not None or not all(s.present for s in anatomy.structures)
    assert anatomy.provenance.untrained and "UNTRAINED" in anatomy.summary_text()

    with pytest.raises(InvalidToolArguments) as caught:
        await registry.call("segment_chest_anatomy", {"image_id": image_id, "structures": ["Hart"]}, context)
    assert isinstance(caught.value, ModelRetry) and "'Hart'" in caught.value.message
    assert all(name in caught.value.message for name in STRUCTURES)
    with pytest.raises(InvalidToolArguments, match="valid: Right Lung, Left Lung"):
        await registry.call("segment_lung_fields", {"image_id": image_id, "structures": ["Heart"]}, context)
    for name in registry.names():
        with pytest.raises(PreconditionFailed, match="this image is CT"):
            await registry.call(name, {"image_id": ct_id}, context)


@pytest.mark.asyncio
async def test_a_dicom_radiographs_own_spacing_gives_the_square_millimetres(settings: Settings, tmp_path: Path,
                                                                          nih_images: list[Path]) -> None:
    """ImagerPixelSpacing 0.5 mm at magnification 1.25 is 0.4 mm at the patient: 0.16 mm² per pixel."""
    toolbox = Toolbox(settings)
    image = toolbox.attach(cr_dicom(nih_images[0], tmp_path / "cr.dcm", spacing=0.5, magnification=1.25))
    assert toolbox.store.load_image(image.id).spacing_mm == pytest.approx((0.4, 0.4))
    result = await toolbox.call("segment_lung_fields", {"image_id": image.id}, toolbox.context([image.id]))
    assert result.spacing_known  # type: ignore[attr-defined]
    for structure in result.structures:  # type: ignore[attr-defined]
        assert structure.area_px > 0
        assert structure.area_mm2 == pytest.approx(structure.area_px * 0.16, rel=1e-3)
        assert structure.box.width_mm == pytest.approx((structure.box.x1 - structure.box.x0) * 0.4, abs=0.1)
    toolbox.close()
