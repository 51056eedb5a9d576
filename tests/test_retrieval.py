"""Retrieval: persisted faiss + SQLite indexes, the real MiniLM text embedder, the classical image
descriptor, adaptive k, self-exclusion, the ``medagent index`` CLI and the retrieval tools."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medagent.errors import ConfigurationError, WeightsUnavailable
from medagent.imaging import ImageLoader, ImageRecord, Modality
from medagent.retrieval import (
    AdaptiveK,
    ClassicalImageEmbedder,
    Document,
    ImageRetriever,
    MiniLmTextEmbedder,
    RadDinoImageEmbedder,
    TextRetriever,
    VectorIndex,
    label_votes,
)
from medagent.retrieval import documents as documents_module
from medagent.retrieval.build import build_text_index
from tests.conftest import TEST_SECRET

LICENSE = "CC0-1.0 (written for the medagent test suite)"
SOURCE = "medagent test guideline snippets"
SNIPPETS = {
    "pleural-effusion": "Pleural effusion is an abnormal collection of fluid between the visceral and parietal "
                        "pleura. On an upright chest radiograph it blunts the costophrenic angle and forms a meniscus; "
                        "ultrasound guides drainage of large effusions.",
    "pneumothorax": "Pneumothorax is air in the pleural cavity. The radiograph shows a visceral pleural line with no "
                    "lung markings beyond it; a tension pneumothorax needs immediate decompression.",
    "cardiomegaly": "Cardiomegaly is suggested when the cardiothoracic ratio exceeds 0.5 on a posteroanterior chest "
                    "radiograph; an anteroposterior film magnifies the heart and overstates the ratio.",
    "pulmonary-embolism": "CT pulmonary angiography is the first-line test for suspected pulmonary embolism in a "
                          "haemodynamically stable adult once the clinical probability has been assessed.",
    "hip-fracture": "When a hip fracture is suspected but the radiographs are normal, MRI is the next test; CT is "
                    "used when MRI is not available within 24 hours.",
    "pneumonia": "Community-acquired pneumonia is diagnosed from new consolidation on the chest radiograph together "
                 "with cough, fever or raised inflammatory markers.",
}
LABELS = {"pleural-effusion": ["Effusion"], "pneumothorax": ["Pneumothorax"], "cardiomegaly": ["Cardiomegaly"],
          "pulmonary-embolism": ["Pulmonary embolism"], "hip-fracture": ["Fracture"], "pneumonia": ["Pneumonia"]}


def _write_jsonl(path: Path) -> Path:
    lines = [json.dumps({"id": doc_id, "text": text, "source": SOURCE, "license": LICENSE, "labels": LABELS[doc_id]})
             for doc_id, text in SNIPPETS.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- adaptive k on constructed similarity lists --------------------------------------------


@pytest.mark.parametrize(("similarities", "rule", "expected"), [
    ([0.90, 0.88, 0.86, 0.50, 0.48], AdaptiveK(k_max=5), 3),  # the break after the third
    ([0.90, 0.89, 0.88, 0.87, 0.86], AdaptiveK(k_max=5), 5),  # no drop of 0.05: keep all
    ([0.90, 0.20, 0.19, 0.10], AdaptiveK(k_min=2, k_max=4), 3),  # the drop after the first is below k_min
    ([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0], AdaptiveK(k_max=4), 1),  # equal drops: the smallest k; k_max bounds the list
    ([0.9, 0.8, 0.7, 0.0], AdaptiveK(k_max=8, min_gap=0.5), 3),
    ([0.9, 0.8], AdaptiveK(k_min=3, k_max=8), 2),  # fewer candidates than k_min: all of them
    ([], AdaptiveK(), 0),
])
def test_adaptive_k_cuts_at_the_largest_drop(similarities: list[float], rule: AdaptiveK, expected: int) -> None:
    assert rule.choose(similarities) == expected


def test_adaptive_k_rejects_unsorted_lists_and_bad_bounds() -> None:
    with pytest.raises(ValueError, match="sorted"):
        AdaptiveK().choose([0.1, 0.9])
    with pytest.raises(ValueError, match="k_min"):
        AdaptiveK(k_min=5, k_max=2)


# -- text: the real all-MiniLM-L6-v2 ---------------------------------------------------------


@pytest.fixture(scope="module")
def text_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text index built through the CLI sub-app (in this process, with the real MiniLM model)."""
    from medagent.cli.index import index_app

    folder = tmp_path_factory.mktemp("text")
    corpus, out = _write_jsonl(folder / "guidelines.jsonl"), folder / "index"
    result = CliRunner().invoke(index_app, ["build", str(corpus), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["indexed"] == len(SNIPPETS) and report["kind"] == "text"
    assert report["embedder"]["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(report["embedder"]["weights_sha256"]) == 64 and report["embedder"]["dimension"] == 384
    return out


@pytest.mark.torch
@pytest.mark.slow
def test_text_index_reloads_and_ranks_the_right_snippet_in_a_new_process(text_index: Path) -> None:
    assert {p.name for p in text_index.iterdir()} == {"vectors.faiss", "documents.sqlite", "manifest.json"}
    result = subprocess.run([sys.executable, "-m", "medagent.cli.index", "query", str(text_index),
                             "fluid in the pleural space", "--k", "3", "--json"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    retrieval = json.loads(result.stdout)
    top = retrieval["hits"][0]
    assert top["doc_id"] == "pleural-effusion"
    assert top["source"] == SOURCE and top["license"] == LICENSE and top["labels"] == ["Effusion"]
    assert top["snippet"] == SNIPPETS["pleural-effusion"]
    assert 1 <= retrieval["k_chosen"] <= 3 and retrieval["k_max"] == 3
    assert retrieval["provenance"]["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert all(a["score"] >= b["score"] for a, b in zip(retrieval["hits"], retrieval["hits"][1:], strict=False))


@pytest.mark.torch
@pytest.mark.slow
def test_text_retriever_in_process_and_its_tool(text_index: Path) -> None:
    from medagent.tools.artifacts import ArtifactStore
    from medagent.tools.retrieval_tools import SearchReportsInput, retrieval_tools
    from medagent.tools.spec import ToolContext

    retriever = TextRetriever(text_index, MiniLmTextEmbedder())
    try:
        hits = retriever.search("how large is the heart on a chest film", k_max=4).hits
        assert hits[0].doc_id == "cardiomegaly"
        excluded = retriever.search("how large is the heart on a chest film", k_max=4,
                                    exclude_doc_ids=["cardiomegaly"])
        assert excluded.excluded_self and "cardiomegaly" not in [h.doc_id for h in excluded.hits]
        (tool,) = retrieval_tools(retriever, None)
        assert tool.name == "search_reports" and tool.ready()
        context = ToolContext(artifacts=ArtifactStore(text_index.parent / "artifacts"))
        result = asyncio.run(tool.run(SearchReportsInput(query="suspected blood clot in the lung arteries",
                                                         k_max=2), context))
        assert result.hits[0].doc_id == "pulmonary-embolism" and result.k_max == 2
        with pytest.raises(ValueError):
            SearchReportsInput(query="x", k_max=21)
        # an index built by another embedder is refused before any vector is compared
        with pytest.raises(ConfigurationError) as refused:
            ImageRetriever(text_index, ClassicalImageEmbedder()).search(_gray_record())
        assert refused.value.details["reason"] == "embedder_mismatch"
    finally:
        retriever.close()


def _gray_record() -> ImageRecord:
    pixels = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    return ImageRecord(pixels=pixels, modality=Modality.DX, source_format="png", source_sha256="0" * 64)


# -- images: the classical descriptor over real images ----------------------------------------


@pytest.fixture
def image_corpus(tmp_path: Path, nih_images: list[Path], pydicom_ct: Path, pydicom_mr: Path) -> Path:
    """A CSV manifest: both NIH images, augmented copies saved as PNG, and pydicom's CT and MR."""
    cardio, normal = (np.asarray(Image.open(p).convert("L")) for p in nih_images)
    height, width = cardio.shape
    copies = {
        "cardio-crop.png": cardio[height // 20: -height // 20, width // 20: -width // 20],
        "cardio-half.png": np.asarray(Image.fromarray(cardio).resize((width // 2, height // 2))),
        "cardio-bright.png": np.clip(cardio.astype(np.int16) + 20, 0, 255).astype(np.uint8),
        "cardio-flip.png": cardio[:, ::-1],
        "normal-crop.png": normal[height // 20: -height // 20, width // 20: -width // 20],
    }
    for name, pixels in copies.items():
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp_path / name)
    rows = [
        ("cardio", nih_images[0], "patient-1", "Cardiomegaly", "Enlarged cardiac silhouette.", "DX"),
        ("cardio-crop", tmp_path / "cardio-crop.png", "patient-1", "Cardiomegaly", "Enlarged heart, cropped.", "DX"),
        ("cardio-half", tmp_path / "cardio-half.png", "patient-4", "Cardiomegaly", "Cardiomegaly.", "DX"),
        ("cardio-bright", tmp_path / "cardio-bright.png", "patient-3", "Cardiomegaly", "", "DX"),
        ("cardio-flip", tmp_path / "cardio-flip.png", "patient-8", "Cardiomegaly", "Enlarged heart (mirrored).", "DX"),
        ("normal", nih_images[1], "patient-2", "No Finding", "No acute cardiopulmonary process.", "DX"),
        ("normal-crop", tmp_path / "normal-crop.png", "patient-5", "No Finding", "Clear lungs.", "DX"),
        ("ct", pydicom_ct, "patient-6", "CT example", "pydicom example CT slice.", ""),
        ("mr", pydicom_mr, "patient-7", "MR example", "pydicom example MR slice.", ""),
    ]
    manifest = tmp_path / "images.csv"
    with manifest.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "path", "record", "labels", "report", "modality"])
        writer.writerows([(i, str(p), r, labels, report, m) for i, p, r, labels, report, m in rows])
    return manifest


@pytest.fixture
def image_index(tmp_path: Path, image_corpus: Path, settings: object, monkeypatch: pytest.MonkeyPatch) -> Path:
    from medagent.cli.index import index_app

    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "home"))
    out = tmp_path / "image-index"
    result = CliRunner().invoke(index_app, ["build", str(image_corpus), "--out", str(out), "--source",
                                            "NIH ChestX-ray14 and pydicom examples", "--license", "CC0-1.0"])
    assert result.exit_code == 0, result.output
    assert "indexed 9 image documents" in result.stdout
    return out


def test_image_query_excludes_its_record_cuts_adaptively_and_votes_labels(
        image_index: Path, loader: ImageLoader, nih_images: list[Path]) -> None:
    query = loader.load(nih_images[0], modality="DX")
    with ImageRetriever(image_index, ClassicalImageEmbedder()) as retriever:
        unfiltered = retriever.search(query, k_max=8, exclude_doc_ids=[])
        result = retriever.search(query, k_max=8, exclude_record_key="patient-1")
    # the image itself (same bytes) is always left out; the record key also removes the crop of patient-1
    assert unfiltered.excluded_self and "cardio" not in [h.doc_id for h in unfiltered.hits]
    assert "cardio-crop" in [h.doc_id for h in unfiltered.hits]
    ids = [h.doc_id for h in result.hits]
    assert result.excluded_self and not {"cardio", "cardio-crop"} & set(ids)
    # adaptive k stops at the break between the chest X-rays and the CT/MR slices (7 candidates, k_max 8)
    assert set(ids) == {"cardio-half", "cardio-bright", "cardio-flip", "normal", "normal-crop"}
    assert result.k_chosen == 5 and result.k_max == 8
    assert ids[:2] == ["cardio-half", "cardio-bright"] and result.hits[0].score > 0.95
    assert result.hits[0].snippet == "Cardiomegaly." and result.hits[0].source.startswith("NIH")
    votes = result.neighbour_label_scores
    cardio_share = sum(h.score for h in result.hits[:3]) / sum(h.score for h in result.hits)
    assert {h.doc_id for h in result.hits[:3]} == {"cardio-half", "cardio-bright", "cardio-flip"}
    assert votes["Cardiomegaly"] == pytest.approx(cardio_share, abs=1e-3)
    assert votes["No Finding"] == pytest.approx(1 - cardio_share, abs=1e-3)
    assert list(votes) == ["Cardiomegaly", "No Finding"] and votes == label_votes(result.hits)
    assert result.provenance.model_id == "medagent/classical-image-descriptor-v1"


def test_find_similar_images_tool_excludes_the_attached_image(image_index: Path, loader: ImageLoader,
                                                             nih_images: list[Path], tmp_path: Path) -> None:
    from medagent.tools.artifacts import ArtifactStore
    from medagent.tools.retrieval_tools import SimilarImagesInput, retrieval_tools
    from medagent.tools.spec import ToolContext

    store = ArtifactStore(tmp_path / "artifacts")
    artifact = store.put_image(loader.load(nih_images[1], modality="DX"))
    retriever = ImageRetriever(image_index, ClassicalImageEmbedder())
    (tool,) = retrieval_tools(None, retriever)
    assert tool.name == "find_similar_images" and tool.ready()
    context = ToolContext(artifacts=store, image_ids=[artifact.id])
    result = asyncio.run(tool.run(SimilarImagesInput(image_id=artifact.id, k_max=3), context))
    retriever.close()
    assert result.excluded_self and result.hits[0].doc_id == "normal-crop"
    assert "normal" not in [h.doc_id for h in result.hits] and result.k_chosen <= 3
    assert not ImageRetriever(tmp_path / "nothing", ClassicalImageEmbedder()).ready()


def test_cli_query_by_image_prints_json(image_index: Path, nih_images: list[Path]) -> None:
    from medagent.cli.index import index_app

    result = CliRunner().invoke(index_app, ["query", str(image_index), "--image", str(nih_images[1]),
                                            "--modality", "DX", "--k", "2", "--json"],
                                env={"MEDAGENT_DEID_SECRET": TEST_SECRET.decode()})
    assert result.exit_code == 0, result.output
    retrieval = json.loads(result.stdout)
    assert retrieval["query_kind"] == "image" and retrieval["hits"][0]["doc_id"] == "normal-crop"


# -- persistence: atomic writes, refusal of incomplete or foreign indexes ----------------------


def _tiny_documents() -> tuple[list[Document], np.ndarray]:
    docs = [Document(doc_id=f"d{i}", kind="image", source="s", license="l", labels=[str(i)]) for i in range(3)]
    return docs, np.eye(3, ClassicalImageEmbedder().dimension, dtype=np.float32)


def test_index_without_manifest_and_a_crashed_rebuild_are_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    info = ClassicalImageEmbedder().info()
    documents, vectors = _tiny_documents()
    with VectorIndex.build(tmp_path / "idx", info, documents, vectors) as index:
        assert len(index) == 3 and index.search(vectors[1], 1) == [(1, pytest.approx(1.0))]

    def crash(*_: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr("medagent.retrieval.index.write_documents", crash)
    with pytest.raises(OSError):
        VectorIndex.build(tmp_path / "idx", info, documents, vectors)
    assert not list((tmp_path / "idx").glob(".*tmp")), "temporary files were left behind"
    with pytest.raises(ConfigurationError) as refused:
        VectorIndex.open(tmp_path / "idx")
    assert refused.value.details["reason"] == "missing_manifest"
    monkeypatch.setattr("medagent.retrieval.index.write_documents", documents_module.write_documents)
    VectorIndex.build(tmp_path / "idx", info, documents, vectors).close()
    (tmp_path / "idx" / "documents.sqlite").write_bytes(b"not the file the manifest describes")
    with pytest.raises(ConfigurationError) as tampered:
        VectorIndex.open(tmp_path / "idx")
    assert tampered.value.details["reason"] == "inconsistent_index"


def test_rad_dino_slot_names_the_missing_folder_and_files(tmp_path: Path) -> None:
    embedder = RadDinoImageEmbedder(tmp_path / "rad-dino")
    assert not embedder.ready()
    with pytest.raises(WeightsUnavailable) as missing:
        embedder.info()
    message = missing.value.message
    assert str(tmp_path / "rad-dino") in message
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert name in message
    assert missing.value.details["missing_files"] == ["config.json", "model.safetensors", "preprocessor_config.json"]


@pytest.mark.torch
@pytest.mark.slow
def test_rad_dino_loading_code_reads_a_real_state_file(tmp_path: Path, loader: ImageLoader,
                                                       nih_images: list[Path], fresh_cache: None) -> None:
    """The loading path, proven with a tiny random DINOv2 written here; not a claim about RAD-DINO itself."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path / "tiny-dinov2"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                      image_mean=[0.53] * 3, image_std=[0.26] * 3).save_pretrained(folder)
    embedder = RadDinoImageEmbedder(folder, model_id="test/tiny-random-dinov2", device="cpu")
    assert embedder.ready() and embedder.info().dimension == 32
    vectors = embedder.embed([loader.load(p, modality="DX") for p in nih_images])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    assert embedder.provenance().weights_sha256 == embedder.info().weights_sha256
    # a classical index is refused by this encoder
    documents, classical_vectors = _tiny_documents()
    VectorIndex.build(tmp_path / "idx", ClassicalImageEmbedder().info(), documents, classical_vectors).close()
    with pytest.raises(ConfigurationError, match="classical"):
        VectorIndex.open(tmp_path / "idx", expected=embedder.info())


def test_corpus_readers_take_folders_jsonl_and_csv_and_name_bad_lines(tmp_path: Path) -> None:
    from medagent.retrieval.corpus import read_image_manifest, read_text_corpus

    (tmp_path / "texts" / "chest").mkdir(parents=True)
    (tmp_path / "texts" / "chest" / "effusion.md").write_text(SNIPPETS["pleural-effusion"], encoding="utf-8")
    (tmp_path / "texts" / "hip.txt").write_text(SNIPPETS["hip-fracture"], encoding="utf-8")
    (tmp_path / "texts" / "notes.csv").write_text("ignored", encoding="utf-8")
    documents = read_text_corpus(tmp_path / "texts", license="CC0-1.0")
    assert [(d.doc_id, d.source, d.license) for d in documents] == [
        ("chest/effusion", "chest/effusion.md", "CC0-1.0"), ("hip", "hip.txt", "CC0-1.0")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "fine"}) + "\n" + json.dumps({"id": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="line 2"):
        read_text_corpus(bad)
    manifest = tmp_path / "images.csv"
    manifest.write_text("path,labels,report\nsub/a.png,Effusion| Cardiomegaly ,seen\n", encoding="utf-8")
    (entry,) = read_image_manifest(manifest)
    assert entry.path == tmp_path / "sub" / "a.png" and entry.labels == ["Effusion", "Cardiomegaly"]
    with pytest.raises(ConfigurationError):
        read_image_manifest(tmp_path / "texts")  # a folder without images


def test_embedder_info_compatibility() -> None:
    classical = ClassicalImageEmbedder().info()
    assert classical.incompatibility(classical) is None
    assert "dimension" in (classical.incompatibility(classical.model_copy(update={"dimension": 8})) or "")
    assert "sha256" in (classical.model_copy(update={"weights_sha256": "a" * 64}).incompatibility(
        classical.model_copy(update={"weights_sha256": "b" * 64})) or "")
