"""Every Settings field changes what medagent does: weight folders, the de-identification key, the caller's
settings reaching dataset loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.errors import SecretInvalid
from medagent.imaging import Deidentifier, load_or_create_secret
from medagent.studies.datasets import DatasetSpec, load_dataset
from tests.conftest import NIH_CARDIOMEGALY, TEST_SECRET

OTHER_SECRET = "another-installation-key-0123456789"


# -- the de-identification key is a Settings field ---------------------------------------------------------


def test_the_deid_secret_comes_from_the_settings_object_and_is_never_printed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.tools.builtin import Toolbox

    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    from_env = Settings(home=tmp_path / "env")
    assert load_or_create_secret(from_env.home, from_env.deid_secret) == TEST_SECRET
    given = Settings(home=tmp_path / "given", deid_secret=OTHER_SECRET)  # code beats the environment
    toolbox = Toolbox(given, plugins=False)
    try:
        assert toolbox.loader.deidentifier.pseudonym("P1") == Deidentifier(OTHER_SECRET.encode()).pseudonym("P1")
    finally:
        toolbox.close()
    for shown in (repr(given), str(given), given.model_dump_json(), repr(given.model_dump())):
        assert OTHER_SECRET not in shown
    monkeypatch.delenv("MEDAGENT_DEID_SECRET")
    unset = Settings(home=tmp_path / "file", deid_secret="")  # empty is unset: the home's key file, made once
    assert unset.deid_secret is None
    assert load_or_create_secret(unset.home, unset.deid_secret) == (unset.home / "deid.secret").read_bytes()


@pytest.mark.parametrize("value", ["too-short", " padded-secret-0123456789 ", "line-break-0123456789abcdef\n",
                                   "\udcff\udcfe" * 10, "x" * 5000])
def test_a_bad_deid_secret_is_refused_by_settings_without_echoing_it(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", value)
    for build in (Settings, lambda: Settings(deid_secret=value)):
        with pytest.raises(SecretInvalid) as refused:
            build()
        assert refused.value.family == "configuration" and value.strip()[:12] not in str(refused.value)


# -- dataset loading uses the caller's settings, not a fresh read of the environment -------------------------


def test_a_case_dataset_writes_embedded_images_with_the_callers_home_and_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = NIH_CARDIOMEGALY.read_bytes()
    rows = [{"general_complaint": "A cough", "complaints": "Dry cough for a week.", "diagnosis": "bronchitis",
             "image": {"bytes": data, "path": "scan.png"}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cases.parquet")
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "environment-home"))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    settings = Settings(home=tmp_path / "caller-home", deid_secret=OTHER_SECRET)

    cases = load_dataset(DatasetSpec(type="cases", path="cases.parquet", format="3mdbench"), tmp_path, settings)
    image = cases[0].images[0]
    assert image.parent == settings.home / "case-images"
    assert image.stem.startswith(Deidentifier(OTHER_SECRET.encode()).content_id(data)[:16])
    assert not (tmp_path / "environment-home").exists()


# -- weight files are searched in Settings.weight_dirs() order, then TorchXRayVision's cache ------------------


def test_weight_files_are_searched_in_weight_dirs_order_and_a_missing_one_names_every_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.errors import WeightsUnavailable
    from medagent.experts.cxr_anatomy import WEIGHTS_FILE
    from medagent.experts.cxr_classifier import DEFAULT_WEIGHTS_FILE
    from medagent.tools.suite import ExpertSuite

    monkeypatch.setenv("MEDAGENT_WEIGHTS_DIR", str(tmp_path / "mine"))
    settings = Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv")
    order = [tmp_path / "mine", tmp_path / "home" / "weights", tmp_path / "xrv"]
    assert settings.weight_dirs() == order[:2]
    suite = ExpertSuite.from_settings(settings)
    try:
        for expert, file_name in ((suite.classifier, DEFAULT_WEIGHTS_FILE), (suite.anatomy, WEIGHTS_FILE)):
            status = expert.weights_status()
            assert not expert.ready() and not status.present and status.expected_path == str(order[0] / file_name)
            with pytest.raises(WeightsUnavailable) as missing:
                expert.weights_file().require(expert.search_dirs, expert.name)
            assert missing.value.details["searched"] == [str(folder) for folder in order]
            assert ", ".join(str(folder) for folder in order) + " (searched in this order)" in missing.value.message
            for folder in reversed(order):  # each folder wins over those after it
                folder.mkdir(parents=True, exist_ok=True)
                (folder / file_name).write_bytes(b"weights")
                assert expert.ready() and expert.weights_status().path == str(folder / file_name)
    finally:
        suite.close()


@pytest.mark.torch
@pytest.mark.asyncio
async def test_the_classifier_loads_the_file_found_in_the_weights_dir(tmp_path: Path, settings: Settings,
                                                                      nih_images: list[Path]) -> None:
    import torch
    import torchxrayvision as xrv

    from medagent.experts.cxr_classifier import DEFAULT_WEIGHTS_FILE
    from medagent.imaging import ImageLoader
    from medagent.runtime.weights import sha256_file
    from medagent.tools.suite import ExpertSuite

    mine = tmp_path / "mine"
    mine.mkdir()
    torch.manual_seed(2)
    torch.save(xrv.models.DenseNet(num_classes=18), mine / DEFAULT_WEIGHTS_FILE)
    settings.xrv_cache_dir.mkdir(parents=True)
    (settings.xrv_cache_dir / DEFAULT_WEIGHTS_FILE).write_bytes(b"a later folder's copy, never read")
    suite = ExpertSuite.from_settings(settings.model_copy(update={"weights_dir": mine}))
    try:
        record = ImageLoader(Deidentifier(TEST_SECRET)).load(nih_images[0], modality="DX")
        result = await suite.classifier(record)
        assert result.provenance.untrained is False
        assert result.provenance.weights_sha256 == sha256_file(mine / DEFAULT_WEIGHTS_FILE)
    finally:
        suite.close()


# -- every field reaches what it configures (a new field without a check here fails) ----------------------

# fields whose effect needs a running component, each tested where that component is
TESTED_ELSEWHERE = {
    "send_burned_in_images": "tests/test_phi_at_rest.py (burned-in images withheld from the planner)",
    "plugins": "tests/test_plugin_api.py (entry-point tools offered or not)",
    "expert_cards": "tests/test_family_cards.py (the cards it names become tools)",
}


def test_every_settings_field_changes_the_parts_built_from_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.imaging.limits import ImageLimits
    from medagent.retrieval.documents import EmbedderInfo, IndexManifest
    from medagent.retrieval.index import MANIFEST_FILE
    from medagent.runtime.cache import shared_cache
    from medagent.tools.builtin import Toolbox

    monkeypatch.delenv("MEDAGENT_DEID_SECRET", raising=False)
    shared_cache()  # another session of this process already made a cache of the default size
    image_index = tmp_path / "image-index"  # an index built with the learned encoder: its folder is needed
    image_index.mkdir()
    manifest = IndexManifest(kind="image", count=0, vectors_sha256="0", documents_sha256="0",
                             embedder=EmbedderInfo(name="rad-dino", kind="image", dimension=8, model_id="m"))
    (image_index / MANIFEST_FILE).write_text(manifest.model_dump_json())
    limits = ImageLimits(max_file_bytes=1234, max_pixels=5678)
    values = {
        "home": tmp_path / "home", "weights_dir": tmp_path / "weights", "xrv_cache_dir": tmp_path / "xrv",
        "workspace": tmp_path, "device": "cuda:7", "model_cache_mb": 3, "max_batch_size": 3,
        "max_batch_wait_ms": 7.5, "allow_untrained_test_only": True, "limits": limits, "plugins": False,
        "send_burned_in_images": True, "bundles_dir": tmp_path / "bundles", "volume_bundle": "my_bundle",
        "text_index_dir": tmp_path / "text-index", "image_index_dir": image_index,
        "image_encoder_dir": tmp_path / "encoder", "grounding_model_dir": tmp_path / "grounder",
        "deid_secret": OTHER_SECRET, "expert_cards": [tmp_path / "card.yaml"],
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    toolbox = Toolbox(settings)
    suite = toolbox.experts
    try:
        classifier = suite.classifier
        checks = {
            "home": toolbox.store.root == settings.home / "artifacts",
            "weights_dir": classifier.search_dirs[0] == tmp_path / "weights",
            "xrv_cache_dir": classifier.search_dirs[-1] == suite.anatomy.search_dirs[-1] == tmp_path / "xrv",
            "workspace": toolbox.loader.workspace == tmp_path,
            "device": {expert.device for expert in (classifier, suite.anatomy, suite.volume)} == {"cuda:7"},
            "model_cache_mb": classifier.cache.budget_bytes == 3 * 1024 * 1024,
            "max_batch_size": classifier.max_batch_size == 3,
            "max_batch_wait_ms": classifier.max_wait_ms == 7.5,
            "allow_untrained_test_only": classifier.ready() and suite.anatomy.ready(),  # no weights anywhere
            "limits": toolbox.loader.limits == limits,
            "bundles_dir": suite.volume.weights_status().expected_path.startswith(str(tmp_path / "bundles")),
            "volume_bundle": "/my_bundle/" in suite.volume.weights_status().expected_path,
            "text_index_dir": suite.text_retriever is not None
                              and suite.text_retriever.index_dir == tmp_path / "text-index",
            "image_index_dir": suite.image_retriever.index_dir == image_index,
            "image_encoder_dir": getattr(suite.image_retriever.embedder, "folder", None) == tmp_path / "encoder",
            "grounding_model_dir": suite.learned_grounder is not None
                                   and suite.learned_grounder.model_dir == tmp_path / "grounder",
            "deid_secret": toolbox.loader.deidentifier.pseudonym("P")
                           == Deidentifier(OTHER_SECRET.encode()).pseudonym("P"),
        }
    finally:
        toolbox.close()
    assert set(checks) | set(TESTED_ELSEWHERE) == set(Settings.model_fields) == set(values)
    assert [field for field, wired in checks.items() if not wired] == []
