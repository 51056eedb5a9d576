"""Every built-in expert and tool passes medagent.testing's expert and tool suites on real images (an NIH chest
X-ray, pydicom's CT and MR slices, nibabel's MR volume); torch experts run in the test-only untrained mode. A broken
tool or expert fails them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import ExpertCrashed
from medagent.experts.grounding import GroundingRequest
from medagent.experts.volume_segmentation import VolumeRequest
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import ExpertResult, Provenance
from medagent.testing import ExpertConformance, ToolConformance, attach
from medagent.tools.builtin import Toolbox
from medagent.tools.plugin import expert_tool
from medagent.tools.spec import Tool, ToolContext
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING, TEST_SECRET
from tests.test_volume_segmentation import MR_INTENSITY, write_bundle

pytestmark = [pytest.mark.torch, pytest.mark.lungs, pytest.mark.slow]


@dataclass
class World:
    toolbox: Toolbox
    context: ToolContext
    ids: dict[str, str]

    def record(self, key: str) -> ImageRecord:
        return self.context.artifacts.load_image(self.ids[key])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pydicom_ct: Path, pydicom_mr: Path,
          nibabel_data: Path) -> Iterator[World]:
    from medagent.retrieval.build import build_image_index, build_text_index
    from medagent.retrieval.corpus import ImageEntry
    from medagent.retrieval.documents import Document
    from medagent.retrieval.embedders import MiniLmTextEmbedder
    from medagent.retrieval.image_embedders import ClassicalImageEmbedder

    root = tmp_path_factory.mktemp("conformance")
    write_bundle(root / "bundles" / "mr_test", "MR", MR_INTENSITY, [3.0, 3.0, 3.0])
    settings = Settings(home=root / "home", xrv_cache_dir=root / "no-weights", allow_untrained_test_only=True,
                        bundles_dir=root / "bundles", volume_bundle="mr_test", deid_secret=TEST_SECRET.decode(),
                        plugins=False)
    toolbox = Toolbox(settings)
    context, ids = attach(root / "artifacts", {
        "dx": (NIH_CARDIOMEGALY, "DX"), "prior": (NIH_NO_FINDING, "DX"), "ct": (pydicom_ct, None),
        "mr": (pydicom_mr, None), "volume": (nibabel_data / "anatomical.nii", "MR")}, secret=TEST_SECRET)
    documents = [Document(doc_id=f"d{i}", kind="text", source="medagent tests", license="CC0-1.0", text=text)
                 for i, text in enumerate(["Pleural effusion blunts the costophrenic angle.",
                                           "Cardiomegaly: a cardiothoracic ratio above 0.5."])]
    build_text_index(documents, MiniLmTextEmbedder(device="cpu"), settings.text_index)
    build_image_index([ImageEntry(path=NIH_NO_FINDING, doc_id="nih", modality="DX", labels=["No Finding"])],
                      toolbox.loader, ClassicalImageEmbedder(), settings.image_index, source="NIH", license="CC0-1.0")
    yield World(toolbox, context, ids)
    toolbox.close()


# -- the tools: which images each accepts and refuses, how it is called, which experts it runs --------------

IMAGE_TOOLS = {  # tool -> (accepted images, refused images)
    "assess_image_quality": (["dx", "volume"], []),
    "read_dicom_header": (["ct"], ["dx"]),
    "classify_chest_xray": (["dx"], ["ct", "volume"]),
    "locate_lungs": (["dx"], ["mr"]),
    "segment_chest_anatomy": (["dx"], ["ct"]),
    "segment_lung_fields": (["dx"], ["ct"]),
    "ground_phrase": (["dx"], ["mr"]),
    "compare_studies": (["dx"], ["volume"]),
    "segment_volume": (["volume"], ["dx", "ct"]),
    "find_similar_images": (["dx"], []),
    "search_reports": ([], []),
}


def _tool_subject(world: World, name: str) -> ToolConformance:
    experts = world.toolbox.experts
    accepted, refused = IMAGE_TOOLS[name]
    arguments = None
    calls: list[dict[str, Any]] = []
    behind: dict[str, list[Expert[Any, Any]]] = {
        "assess_image_quality": [experts.quality], "read_dicom_header": [experts.dicom_header],
        "classify_chest_xray": [experts.classifier], "locate_lungs": [experts.lungs],
        "segment_chest_anatomy": [experts.anatomy], "segment_lung_fields": [experts.lung_fields],
        "ground_phrase": [experts.saliency, experts.classifier, experts.lungs, experts.lung_fields, experts.anatomy],
        "compare_studies": [experts.differencer, experts.classifier], "segment_volume": [experts.volume],
    }
    if name == "ground_phrase":
        def arguments(image_id: str) -> dict[str, Any]:
            return {"image_id": image_id, "phrase": "cardiomegaly"}  # Grad-CAM of the (untrained) classifier
        calls = [{"image_id": world.ids["dx"], "phrase": "left lower zone"}]  # lung geometry
    elif name == "compare_studies":
        def arguments(image_id: str) -> dict[str, Any]:
            return {"prior_image_id": world.ids["prior"], "current_image_id": image_id}
    elif name == "search_reports":
        calls = [{"query": "fluid around the lung", "k_max": 2}]
    return ToolConformance(world.toolbox.registry.get(name), world.context,
                           accepted=[world.ids[k] for k in accepted], refused=[world.ids[k] for k in refused],
                           arguments=arguments, calls=calls, experts=behind.get(name, []))


def test_every_builtin_tool_is_covered(world: World) -> None:
    assert sorted(world.toolbox.registry.names()) == sorted(IMAGE_TOOLS)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(IMAGE_TOOLS))
async def test_every_builtin_tool_passes_the_tool_suite(world: World, name: str) -> None:
    await _tool_subject(world, name).verify()


# -- the experts behind them, called directly: micro-batching and lazy loading ---------------------------------


def _expert_subject(world: World, name: str) -> ExpertConformance:
    experts = world.toolbox.experts
    dx, ct, volume = world.record("dx"), world.record("ct"), world.record("volume")
    chest = {"accepted": [dx], "refused": [ct, volume]}
    subjects: dict[str, tuple[Expert[Any, Any], dict[str, Any]]] = {
        "quality": (experts.quality, {"accepted": [dx, volume]}),
        "dicom_header": (experts.dicom_header, {"accepted": [ct], "refused": [dx]}),
        "lungs": (experts.lungs, chest),
        "lung_fields": (experts.lung_fields, chest),
        "classifier": (experts.classifier, chest),
        "anatomy": (experts.anatomy, chest),
        "saliency": (experts.saliency, {**chest, "items": [GroundingRequest(dx, "cardiomegaly", "Cardiomegaly")]}),
        "differencer": (experts.differencer, {"items": [(world.record("prior"), dx)], "refused": [volume]}),
        "volume": (experts.volume, {"items": [VolumeRequest(image=volume)], "accepted": [volume], "refused": [dx]}),
    }
    expert, options = subjects[name]
    return ExpertConformance(expert, **options)


EXPERTS = ["anatomy", "classifier", "dicom_header", "differencer", "lung_fields", "lungs", "quality", "saliency",
           "volume"]


def test_every_builtin_expert_is_covered(world: World) -> None:
    suite = world.toolbox.experts
    assert {id(expert) for expert in suite.all()} == {id(getattr(suite, name)) for name in EXPERTS}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", EXPERTS)
async def test_every_builtin_expert_passes_the_expert_suite(world: World, name: str) -> None:
    await _expert_subject(world, name).verify()


# -- broken implementations: each breaks one contract, and the suites say so -----------------------------------


class Score(ExpertResult):
    score: float


class Bare(BaseModel):
    score: float


class Toy(Expert[ImageRecord, Score]):
    """A tiny expert whose faults are switched on one at a time."""

    name = "toy"
    card = ModelCard(summary="A toy chest X-ray score.", modalities=[Modality.DX, Modality.CR])
    cpu_only = True

    def __init__(self, fault: str = "") -> None:
        super().__init__(max_wait_ms=20)
        self.fault = fault

    @property
    def cache_key(self) -> str:
        return f"toy:{self.fault}:{id(self)}"

    def ready(self) -> bool:
        if self.fault == "ready loads":
            self.loaded()
        return True

    def load(self, device: str) -> LoadedModel:
        return LoadedModel(model=None, provenance=Provenance(expert=self.name, model_id="toy-v1"))

    async def __call__(self, item: ImageRecord) -> Score:
        if self.fault == "raw errors" and not isinstance(item, ImageRecord):
            raise ValueError("not an image")  # checked before the runtime, which would have typed it
        return await super().__call__(item)

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[Score | BaseException]:
        if self.fault == "one bad item fails the batch" and not all(isinstance(i, ImageRecord) for i in items):
            return [ExpertCrashed("toy: a bad item in the batch") for _ in items]
        return [Score(provenance=loaded.provenance, score=float(item.pixels.mean())) for item in items]


def _unchecked(expert: Toy) -> Tool[Any, Any]:
    """expert_tool without the card's modality check: runs the expert on any image."""
    checked = expert_tool(expert, Score)

    async def run(arguments: Any, context: ToolContext) -> Score:
        return await expert(context.load_image(arguments.image_id))

    return Tool(name=checked.name, card=checked.card, input_model=checked.input_model, output_model=Score, run=run)


def _bare(expert: Toy) -> Tool[Any, Any]:
    """A tool whose output drops the provenance."""
    checked = expert_tool(expert, Score)

    async def run(arguments: Any, context: ToolContext) -> Bare:
        return Bare(score=(await expert(context.load_image(arguments.image_id))).score)

    return Tool(name=checked.name, card=checked.card, input_model=checked.input_model, output_model=Bare, run=run)


@pytest.mark.asyncio
@pytest.mark.parametrize(("fault", "check"), [("ready loads", "ready_loads_nothing"),
                                              ("one bad item fails the batch", "bad_item_fails_alone_in_a_batch"),
                                              ("raw errors", "typed_errors")])
async def test_a_broken_expert_fails_the_expert_suite(world: World, fault: str, check: str) -> None:
    expert = Toy(fault)
    try:
        report = await ExpertConformance(expert, accepted=[world.record("dx")], refused=[world.record("ct")]).report()
    finally:
        expert.close()
    assert check in report.failed, (report.failed, report.passed)


@pytest.mark.asyncio
@pytest.mark.parametrize(("build", "check"), [(_unchecked, "card_matches_modality_check"), (_bare, "provenance")])
async def test_a_broken_tool_fails_the_tool_suite(world: World, build: Any, check: str) -> None:
    expert = Toy()
    try:
        suite = ToolConformance(build(expert), world.context, accepted=[world.ids["dx"]], refused=[world.ids["ct"]],
                                experts=[expert])
        report = await suite.report()
    finally:
        expert.close()
    assert check in report.failed, (report.failed, report.passed)
    assert (await ToolConformance(expert_tool(Toy(), Score), world.context, accepted=[world.ids["dx"]],
                                  refused=[world.ids["ct"]]).report()).ok  # the same tool, built right, passes
