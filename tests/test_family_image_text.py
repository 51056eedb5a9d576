"""Image-text retrieval with the towers of tiny random SigLIP/CLIP folders: `medagent index build --card` indexes
NIH chest X-rays and pydicom's CT with their reports; an image finds reports, a text finds images."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medagent.config import Settings
from medagent.errors import ConfigurationError, PreconditionFailed, WeightsUnavailable
from medagent.families.registry import family_tools
from medagent.retrieval.retriever import SNIPPET_CHARS, Retrieval
from medagent.testing import ToolConformance, attach
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING, TEST_SECRET
from tests.test_family_zero_shot import tiny_model_folder

pytestmark = [pytest.mark.torch]
LONG_REPORT = "Enlarged cardiac silhouette. " * 40  # longer than a snippet: what the planner reads is bounded


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, pydicom_ct: Path) -> dict[str, Path]:
    from medagent.cli.index import index_app

    root = tmp_path_factory.mktemp("image-text")
    folders = {arch: tiny_model_folder(root / arch, arch) for arch in ("siglip", "clip")}
    manifest = root / "images.csv"
    with manifest.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "path", "record", "labels", "report", "modality"])
        writer.writerows([("nih-1", NIH_CARDIOMEGALY, "p1", "Cardiomegaly", LONG_REPORT, ""),
                          ("nih-2", NIH_NO_FINDING, "p2", "No Finding", "Clear lungs. No acute findings.", ""),
                          ("ct-1", pydicom_ct, "p3", "", "Axial CT slice.", "CT")])
    card = root / "siglip.yaml"
    card.write_text("family: image_text_retrieval\nname: tinysig\nfolder: siglip\narchitecture: siglip\n"
                    "model_id: example/tiny-siglip\nuntrained_test_only: true\nindex: index\nmodalities: [DX, CR]\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDAGENT_HOME", str(root / "home"))
        patch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
        refused = CliRunner().invoke(index_app, ["build", str(manifest), "--out", str(root / "index"), "--card",
                                                 str(card)])
        assert refused.exit_code != 0  # random test weights need the explicit test switch
        patch.setenv("MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY", "1")
        result = CliRunner().invoke(index_app, ["build", str(manifest), "--out", str(root / "index"), "--card",
                                                str(card), "--json", "--modality", "DX"])
    assert result.exit_code == 0, result.output
    assert '"indexed": 3' in result.stdout
    return {"card": card, "index": root / "index", **folders}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pydicom_ct: Path) -> tuple[ToolContext, dict[str, str]]:
    return attach(tmp_path_factory.mktemp("store"), {"dx": (NIH_CARDIOMEGALY, None), "ct": (pydicom_ct, None)})


@pytest.fixture
def test_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allow_untrained_test_only=True)


def _call(tool: Any, context: ToolContext, arguments: dict[str, Any]) -> Any:
    return ToolRegistry([tool]).call(tool.name, arguments, context)


@pytest.mark.asyncio
async def test_an_image_finds_reports_and_a_text_finds_images(built: dict[str, Path], world: Any,
                                                              test_settings: Settings) -> None:
    context, ids = world
    reports, images = family_tools(test_settings, card=built["card"])
    assert (reports.name, images.name) == ("tinysig_search_reports", "tinysig_search_images")
    await ToolConformance(reports, context, accepted=[ids["dx"]], refused=[ids["ct"]]).verify()
    found = await _call(reports, context, {"image_id": ids["dx"], "k_max": 5})
    assert isinstance(found, Retrieval) and (found.query_kind, found.index_kind) == ("image", "text")
    assert found.provenance.untrained and found.provenance.expert == "tinysig"
    # the query image's own report is never among its neighbours; the others are, shortened
    assert found.excluded_self and "nih-1" not in {hit.doc_id for hit in found.hits} and found.hits
    # concurrent calls share one model and tokenizer (the tool allows four at a time)
    queries = ["enlarged heart", "pleural effusion", "clear lungs", "axial slice"]
    hits, *others = await asyncio.gather(*(_call(images, context, {"query": q, "k_max": 5}) for q in queries))
    assert all(other.hits for other in others)
    assert (hits.query_kind, hits.index_kind) == ("text", "image")
    assert {hit.doc_id for hit in hits.hits} <= {"nih-1", "nih-2", "ct-1"} and hits.hits
    assert all(hit.snippet is None or len(hit.snippet) <= SNIPPET_CHARS for hit in hits.hits)
    assert any(hit.snippet and hit.snippet.endswith("\u2026") for hit in hits.hits) or len(hits.hits) < 3
    with pytest.raises(PreconditionFailed):  # routing: the card takes DX/CR images only
        await _call(reports, context, {"image_id": ids["ct"]})
    for tool in (reports, images):
        tool.close()


@pytest.mark.asyncio
async def test_another_encoder_a_missing_index_or_folder_are_typed_errors(built: dict[str, Path], world: Any,
                                                                          test_settings: Settings,
                                                                          tmp_path: Path) -> None:
    context, ids = world
    base = {"family": "image_text_retrieval", "name": "other", "model_id": "example/tiny-clip",
            "untrained_test_only": True}
    clip = family_tools(test_settings, card={**base, "folder": str(built["clip"]), "architecture": "clip",
                                             "index": str(built["index"])})
    for tool, arguments in zip(clip, ({"image_id": ids["dx"]}, {"query": "effusion"}), strict=True):
        with pytest.raises(ConfigurationError) as caught:
            await _call(tool, context, arguments)
        assert caught.value.details["reason"] == "embedder_mismatch"
    absent = family_tools(test_settings, card={**base, "folder": str(built["siglip"]), "architecture": "siglip",
                                               "index": str(tmp_path / "none")})
    assert not any(tool.ready() for tool in absent)
    with pytest.raises(ConfigurationError) as caught:
        await _call(absent[1], context, {"query": "effusion"})
    assert caught.value.details["reason"] == "missing_manifest"
    no_model = family_tools(test_settings, card={**base, "folder": str(tmp_path / "nothing"),
                                                 "architecture": "siglip", "index": str(built["index"])})
    assert not any(tool.ready() for tool in no_model)
    with pytest.raises(WeightsUnavailable, match="example/tiny-clip"):
        await _call(no_model[0], context, {"image_id": ids["dx"]})
    for tool in (*clip, *absent, *no_model):
        tool.close()


def test_the_cards_batch_size_sets_the_batches_an_index_is_built_in(
        built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.cli.index import index_app
    from medagent.families import image_text

    sizes: list[int] = []
    embed = image_text.Tower.embed

    def counted(self: Any, items: Any) -> Any:
        sizes.append(len(items))
        return embed(self, items)

    monkeypatch.setattr(image_text.Tower, "embed", counted)
    card = tmp_path / "card.yaml"
    card.write_text(built["card"].read_text().replace("folder: siglip", f"folder: {built['siglip']}")
                    + "max_batch_size: 1\n")
    manifest = built["card"].parent / "images.csv"
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setenv("MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY", "1")
    result = CliRunner().invoke(index_app, ["build", str(manifest), "--out", str(tmp_path / "index"), "--card",
                                            str(card), "--json"])
    assert result.exit_code == 0, result.output
    assert sizes and max(sizes) == 1  # images, then reports, one at a time (the default is 16 together)
