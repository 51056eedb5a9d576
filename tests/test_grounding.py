"""Phrase grounding on real chest X-rays: phrase parsing, lung geometry, Grad-CAM, the tool, the learned slot."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.errors import (
    ConfigurationError,
    InvalidToolArguments,
    ModelRetry,
    PreconditionFailed,
    WeightsUnavailable,
)
from medagent.experts.cxr_classifier import CxrClassifier
from medagent.experts.grounding import AnatomyPhrase, GroundingRequest, PathologyPhrase, parse_phrase
from medagent.experts.learned_grounder import LearnedGrounder, parse_box_output, to_image_box
from medagent.experts.lung_phrases import LungMasks, LungPhraseGrounder, view_assumption
from medagent.experts.lungs import LungLocalizer
from medagent.experts.saliency import SaliencyGrounder, cam_to_image_grid
from medagent.imaging import Deidentifier, ImageLoader
from medagent.imaging.heatmap import heatmap_overlay_png
from medagent.imaging.record import ImageRecord
from medagent.runtime.cache import ModelCache
from medagent.runtime.results import Provenance
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from medagent.tools.builtin import Toolbox
from medagent.tools.grounding_tools import grounding_tools
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext
from tests.conftest import TEST_SECRET

ZONES = ("upper zone", "middle zone", "lower zone")


@pytest.fixture(scope="module")
def records(nih_images: list[Path]) -> list[ImageRecord]:
    loader = ImageLoader(Deidentifier(TEST_SECRET))
    return [loader.load(path, modality="DX") for path in nih_images]


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(2 * 1024**3)


@pytest.fixture(scope="module")
def lung_grounder(cache: ModelCache) -> LungPhraseGrounder:
    return LungPhraseGrounder(LungLocalizer(cache=cache))


@pytest.fixture(scope="module")
def saliency(cache: ModelCache, tmp_path_factory: pytest.TempPathFactory) -> SaliencyGrounder:
    classifier = CxrClassifier(cache_dir=tmp_path_factory.mktemp("xrv"), allow_untrained_test_only=True, cache=cache)
    return SaliencyGrounder(classifier, cache=cache)


def _with_view(record: ImageRecord, view: str) -> ImageRecord:
    return record.model_copy(update={"metadata": record.metadata.model_copy(update={"view_position": view})})


# -- phrase parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("phrase", "side", "region", "lobe_note"), [
    ("left lung", "left", "lung", False),
    ("Right lower zone", "right", "lower_zone", False),
    ("both lungs", "both", "lung", False),
    ("upper zone of the right lung", "right", "upper_zone", False),
    ("left upper lobe", "left", "upper_zone", True),
    ("right middle lobe", "right", "middle_zone", True),
    ("lingula", "left", "middle_zone", True),
    ("right costophrenic angle", "right", "costophrenic_angle", False),
    ("left CP angle", "left", "costophrenic_angle", False),
    ("right hilum", "right", "hilum", False),
    ("apices", "both", "apex", False),
    ("right mid-zone", "right", "middle_zone", False),
])
def test_anatomy_phrases_are_normalised(phrase: str, side: str, region: str, lobe_note: bool) -> None:
    parsed = parse_phrase(phrase)
    assert isinstance(parsed, AnatomyPhrase)
    assert (parsed.side, parsed.region) == (side, region)
    assert any("lobe" in note or "lingula" in note for note in parsed.assumptions) is lobe_note


@pytest.mark.parametrize(("phrase", "label", "qualifier"), [
    ("cardiomegaly", "Cardiomegaly", None),
    ("Pleural effusion", "Effusion", None),
    ("left pleural effusion", "Effusion", "left"),
    ("pulmonary oedema", "Edema", None),
    ("widened mediastinum", "Enlarged Cardiomediastinum", None),
    ("right upper lobe nodule", "Nodule", "right upper lobe"),
])
def test_pathology_phrases_map_to_classifier_labels(phrase: str, label: str, qualifier: str | None) -> None:
    parsed = parse_phrase(phrase)
    assert isinstance(parsed, PathologyPhrase)
    assert (parsed.label, parsed.qualifier) == (label, qualifier)


@pytest.mark.parametrize("phrase", ["spleen", "left middle lobe", "", "right kidney"])
def test_unknown_phrases_ask_the_planner_to_retry(phrase: str) -> None:
    with pytest.raises(InvalidToolArguments) as caught:
        parse_phrase(phrase)
    assert isinstance(caught.value, ModelRetry)
    assert "lingula" in caught.value.message  # says what is understood instead


# -- lung phrases ------------------------------------------------------------------------------------


@pytest.mark.lungs
@pytest.mark.asyncio
async def test_lung_phrases_on_both_radiographs(records: list[ImageRecord], lung_grounder: LungPhraseGrounder) -> None:
    for record in records:
        height, width = record.pixels.shape
        both = await lung_grounder.ground(record, "both lungs")
        assert both.kind == "anatomy" and "view position is not recorded" in " ".join(both.assumptions)
        right, left = (next(r.box for r in both.regions if r.label == f"{side} lung") for side in ("right", "left"))
        # the patient's right lung lies on the image's left half in a frontal view
        assert (right.x0 + right.x1) / 2 < width / 2 < (left.x0 + left.x1) / 2
        for side, lung in (("right", right), ("left", left)):
            zones = [(await lung_grounder.ground(record, f"{side} {zone}")).regions[0].box for zone in ZONES]
            assert zones[0].y0 == lung.y0 and zones[-1].y1 == lung.y1
            for upper, lower in zip(zones, zones[1:], strict=False):
                assert upper.y1 == lower.y0 and upper.y0 < upper.y1
            for zone in zones:
                assert (zone.x0, zone.x1) == (lung.x0, lung.x1)
            angle = (await lung_grounder.ground(record, f"{side} costophrenic angle")).regions[0].box
            hilum = (await lung_grounder.ground(record, f"{side} hilum")).regions[0].box
            assert angle.y1 == lung.y1 and lung.y0 <= hilum.y0 < hilum.y1 <= lung.y1
            # lateral = towards the image edge the lung is on; the hilum sits on the medial side
            if side == "right":
                assert angle.x0 == lung.x0 and hilum.x1 == lung.x1
            else:
                assert angle.x1 == lung.x1 and hilum.x0 == lung.x0
    pa = await lung_grounder.ground(_with_view(records[0], "PA"), "left lower lobe")
    assert pa.assumptions[0].startswith("PA view (from the image metadata)")
    assert any("lower lobe is mapped to the lower zone" in note for note in pa.assumptions)
    with pytest.raises(PreconditionFailed, match="lateral"):
        view_assumption(_with_view(records[0], "LL"))


@pytest.mark.lungs
@pytest.mark.asyncio
async def test_lung_phrases_from_masks_use_the_mask_extent(records: list[ImageRecord],
                                                          lung_grounder: LungPhraseGrounder) -> None:
    """Masks are ellipses inscribed in the detected lung boxes: each zone box is the ellipse within that third."""
    record = records[1]
    boxes = {r.label.split()[0]: r.box for r in (await lung_grounder.ground(record, "both lungs")).regions}
    rows, columns = np.mgrid[: record.pixels.shape[0], : record.pixels.shape[1]]
    masks = {}
    for side, box in boxes.items():
        cx, cy, rx, ry = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, (box.x1 - box.x0) / 2, (box.y1 - box.y0) / 2
        masks[f"{side.title()} Lung"] = ((columns - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1
    source = Provenance(expert="test_masks", model_id="ellipses in lungs-finder boxes")

    async def provider(image: ImageRecord) -> LungMasks:
        return LungMasks(masks=masks, provenance=source)

    grounder = LungPhraseGrounder(lung_grounder.localizer, mask_provider=provider)
    for side in ("right", "left"):
        zones = [(await grounder.ground(record, f"{side} {zone}")).regions[0].box for zone in ZONES]
        mask_rows = np.flatnonzero(masks[f"{side.title()} Lung"].any(axis=1))
        assert zones[0].y0 == mask_rows[0] and zones[-1].y1 == mask_rows[-1] + 1
        widths = [zone.x1 - zone.x0 for zone in zones]
        assert widths[1] > widths[0] and widths[1] > widths[2]  # an ellipse is widest in its middle third
        for zone in zones:
            assert masks[f"{side.title()} Lung"][zone.y0:zone.y1, zone.x0:zone.x1].any()
    result = await grounder.ground(record, "right upper zone")
    assert result.provenance.model_id == "ellipses in lungs-finder boxes" and "masks" in result.method

    async def half(image: ImageRecord) -> LungMasks:
        return LungMasks(masks={"Right Lung": masks["Right Lung"]}, provenance=source)

    with pytest.raises(ConfigurationError, match="Left Lung"):
        await LungPhraseGrounder(lung_grounder.localizer, mask_provider=half).ground(record, "left lung")


# -- Grad-CAM -----------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.asyncio
async def test_grad_cam_is_a_real_backward_pass_mapped_to_the_image(records: list[ImageRecord],
                                                                   saliency: SaliencyGrounder) -> None:
    import torch

    record = records[0]
    first = await saliency(GroundingRequest(record=record, phrase="cardiomegaly", label="Cardiomegaly"))
    other = await saliency(GroundingRequest(record=record, phrase="pneumothorax", label="Pneumothorax"))
    result = first.grounding
    assert result.provenance.untrained is True and result.provenance.expert == "saliency_grounder"
    assert "UNTRAINED" in result.summary_text() and "saliency map, not a detection" in result.summary_text()
    heatmap = first.heatmap
    assert heatmap.shape == record.pixels.shape and np.isfinite(heatmap).all()
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0, abs=0.02) and heatmap.std() > 0.05
    assert not np.allclose(heatmap, other.heatmap, atol=0.05)  # another label, another map
    assert result.regions and all(region.kind == "saliency" for region in result.regions)
    peaks = [region.peak for region in result.regions]
    assert peaks == sorted(peaks, reverse=True)  # type: ignore[type-var]
    for region in result.regions:
        box = region.box
        assert 0 <= box.x0 < box.x1 <= record.pixels.shape[1] and 0 <= box.y0 < box.y1 <= record.pixels.shape[0]
        assert region.score is not None and 0.5 <= region.score <= 1.0
    # the hooked computation equals Grad-CAM written out by hand on the same shared network
    state = saliency.classifier.loaded().model
    model, index = state["model"], state["labels"].index("Cardiomegaly")
    image = torch.from_numpy(saliency.classifier.preprocess(record, 224)[None])
    features = model.features(image)
    logits = model.classifier(torch.nn.functional.adaptive_avg_pool2d(torch.relu(features), 1).flatten(1))
    (gradients,) = torch.autograd.grad(logits[0, index], features)
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * features).sum(1))[0].detach().numpy()
    assert np.allclose(cam_to_image_grid(cam, record.pixels.shape), heatmap, atol=1e-3)
    assert all(parameter.grad is None for parameter in model.parameters())  # shared weights left untouched
    # a non-square input: the map covers the central square the classifier saw and nothing else
    tall = record.model_copy(update={"pixels": record.pixels[:, 100:400]})
    cropped = (await saliency(GroundingRequest(record=tall, phrase="cardiomegaly", label="Cardiomegaly"))).heatmap
    assert cropped.shape == (512, 300)
    assert cropped[:106].max() == 0 and cropped[406:].max() == 0 and cropped[106:406].max() > 0.9
    with pytest.raises(InvalidToolArguments, match="do not score"):
        await saliency(GroundingRequest(record=record, phrase="x", label="Spleen"))


def test_cam_geometry_follows_the_centre_crop() -> None:
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[0, 6] = 2.0  # top-right cell of what the classifier saw
    heatmap = cam_to_image_grid(cam, (300, 200))
    assert heatmap.shape == (300, 200) and heatmap.max() == pytest.approx(1.0, abs=0.05)
    assert heatmap[:50].max() == 0 and heatmap[250:].max() == 0  # rows outside the central 200 x 200 square
    row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert 50 <= row < 50 + 200 / 7 and column >= 200 - 200 / 7


def test_heatmap_overlay_colours_only_salient_pixels(records: list[ImageRecord]) -> None:
    image = records[0].as_2d()
    heatmap = np.zeros_like(image)
    heatmap[100:200, 300:400] = 1.0
    png = heatmap_overlay_png(image, heatmap, [("region", (300, 100, 400, 200))])
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG" and picture.size == (512, 512)
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    red, green, blue = pixels[350, 100]
    assert red == green == blue  # no saliency: the plain radiograph
    assert len(set(pixels[150, 350])) > 1  # salient: coloured
    band = pixels[-15:]
    assert (band == 0).all(axis=2).mean() > 0.5 and band.max() > 200  # white caption on a black band


# -- the tool --------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.lungs
@pytest.mark.slow
@pytest.mark.asyncio
async def test_ground_phrase_tool_end_to_end(tmp_path: Path, records: list[ImageRecord], pydicom_ct: Path,
                                             saliency: SaliencyGrounder, lung_grounder: LungPhraseGrounder,
                                             no_blocking: None) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    image_id = store.put_image(records[0]).id
    ct_id = store.put_image(ImageLoader(Deidentifier(TEST_SECRET)).load(pydicom_ct)).id
    context = ToolContext(artifacts=store, image_ids=[image_id, ct_id])
    missing_learned = LearnedGrounder(tmp_path / "maira-2")  # not ready: findings fall back to Grad-CAM
    registry = ToolRegistry(grounding_tools(saliency, lung_grounder, missing_learned))

    finding = await registry.call("ground_phrase", {"image_id": image_id, "phrase": "left pleural effusion"}, context)
    assert finding.kind == "saliency" and finding.provenance.untrained  # type: ignore[attr-defined]
    assert "'left'" in finding.note  # type: ignore[attr-defined]
    heatmap_artifact = store.get(finding.heatmap_id)  # type: ignore[attr-defined]
    assert heatmap_artifact.kind is ArtifactKind.HEATMAP
    assert np.load(heatmap_artifact.path).shape == records[0].pixels.shape
    with Image.open(io.BytesIO(store.read_bytes(finding.overlay_id))) as png:  # type: ignore[attr-defined]
        assert png.format == "PNG" and png.size == (512, 512) and png.mode == "RGB"

    anatomy = await registry.call("ground_phrase", {"image_id": image_id, "phrase": "right lower zone"}, context)
    assert anatomy.kind == "anatomy" and anatomy.heatmap_id is None  # type: ignore[attr-defined]
    assert store.get(anatomy.overlay_id).kind is ArtifactKind.OVERLAY  # type: ignore[attr-defined]
    assert anatomy.regions[0].label == "right lower zone"  # type: ignore[attr-defined]

    with pytest.raises(PreconditionFailed, match="this image is CT"):
        await registry.call("ground_phrase", {"image_id": ct_id, "phrase": "left lung"}, context)
    with pytest.raises(InvalidToolArguments, match="not understood"):
        await registry.call("ground_phrase", {"image_id": image_id, "phrase": "left kidney"}, context)


@pytest.mark.torch
@pytest.mark.asyncio
async def test_tool_is_ready_without_weights_but_findings_name_the_missing_file(
    tmp_path: Path, records: list[ImageRecord], lung_grounder: LungPhraseGrounder
) -> None:
    without_weights = SaliencyGrounder(CxrClassifier(cache_dir=tmp_path / "empty", cache=ModelCache(1024)))
    (tool,) = grounding_tools(without_weights, lung_grounder)
    assert not without_weights.ready() and tool.ready()  # the anatomy path needs no weights
    store = ArtifactStore(tmp_path / "artifacts")
    image_id = store.put_image(records[1]).id
    with pytest.raises(WeightsUnavailable, match=re.escape(str(tmp_path / "empty"))):
        await ToolRegistry([tool]).call("ground_phrase", {"image_id": image_id, "phrase": "cardiomegaly"},
                                        ToolContext(artifacts=store, image_ids=[image_id]))


# -- the learned slot --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_learned_grounder_names_the_folder_and_the_missing_files(tmp_path: Path,
                                                                       records: list[ImageRecord]) -> None:
    folder = tmp_path / "maira-2"
    grounder = LearnedGrounder(folder)
    assert not grounder.ready() and not grounder.weights_status().present
    with pytest.raises(WeightsUnavailable) as caught:
        await grounder(GroundingRequest(record=records[0], phrase="pleural effusion"))
    assert str(folder) in caught.value.message
    assert "config.json" in caught.value.message and "model.safetensors" in caught.value.message
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert grounder.missing_files() == ["model-00002-of-00002.safetensors"]
    grounder.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("<obj>Left pleural effusion <box><x55><y45><x70><y56></box></obj>",
     [("Left pleural effusion", (0.555, 0.455, 0.705, 0.565))]),
    ("<box>0.1,0.2,0.5,0.9</box>", [(None, (0.1, 0.2, 0.5, 0.9))]),
    ("<ref>heart</ref><box>(100,200),(500,800)</box>", [("heart", (0.1, 0.2, 0.5, 0.8))]),
    ("<|object_ref_start|>nodule<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>",
     [("nodule", (0.01, 0.02, 0.03, 0.04))]),
    ("<loc0256><loc0128><loc0768><loc0512> effusion", [("effusion", (0.125, 0.25, 0.5, 0.75))]),
    ("<obj>two sites <box><x10><y10><x20><y20></box><box><x60><y10><x70><y20></box></obj><obj>no box</obj>",
     [("two sites", (0.105, 0.105, 0.205, 0.205)), ("two sites", (0.605, 0.105, 0.705, 0.205))]),
    ("<box>1,2,3</box> <box>0.5,0.5,0.2,0.9</box> no boxes here", []),
])
def test_box_output_parser(text: str, expected: list[tuple[str | None, tuple[float, ...]]]) -> None:
    boxes = parse_box_output(text)
    assert [(box.phrase, (box.x0, box.y0, box.x1, box.y1)) for box in boxes] == [
        (phrase, pytest.approx(values)) for phrase, values in expected]


def test_normalised_boxes_map_to_pixels_through_the_model_frame() -> None:
    (whole,) = parse_box_output("<box>0,0,1,1</box>")
    crop = to_image_box(whole, 600, 400, "center_square_crop", spacing_mm=(0.5, 0.25))
    assert (crop.x0, crop.y0, crop.x1, crop.y1) == (100, 0, 500, 400)
    assert (crop.width_mm, crop.height_mm) == (100.0, 200.0)
    full = to_image_box(whole, 600, 400, "full_image")
    assert (full.x0, full.y0, full.x1, full.y1, full.width_mm) == (0, 0, 600, 400, None)


@pytest.mark.asyncio
async def test_the_toolbox_grounds_lung_phrases_on_the_lung_field_segmentation(settings: Settings,
                                                                              nih_images: list[Path]) -> None:
    """Without PSPNet weights the suite grounds anatomy on the classical lung-field masks."""
    toolbox = Toolbox(settings)
    image = toolbox.attach(nih_images[1], modality="DX")
    context = toolbox.context([image.id])
    zone = await toolbox.call("ground_phrase", {"image_id": image.id, "phrase": "right lower zone"}, context)
    lung = await toolbox.call("segment_lung_fields", {"image_id": image.id}, context)
    assert "lung-field masks" in zone.method  # type: ignore[attr-defined]
    right = next(s for s in lung.structures if s.label == "Right Lung")  # type: ignore[attr-defined]
    (region,) = zone.regions  # type: ignore[attr-defined]
    # the lower zone lies inside the right lung's box, in its lower part
    assert right.box.x0 <= region.box.x0 < region.box.x1 <= right.box.x1
    assert region.box.y1 <= right.box.y1 and region.box.y0 > (right.box.y0 + right.box.y1) / 2
    toolbox.close()
