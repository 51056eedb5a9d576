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
