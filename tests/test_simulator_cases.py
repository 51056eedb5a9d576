"""Case loaders (AgentClinic, 3MDBench, medagent's format), the built-in case set and label sets by name."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medagent.dialogue.cases import TEMPERAMENTS
from medagent.errors import ConfigurationError
from medagent.imaging import ImageLoader
from medagent.simulators.builtin import (
    UnknownLabelSet,
    builtin_cases,
    builtin_label_set,
    label_set_named,
    open_label_set,
)
from medagent.simulators.loaders import (
    CaseFileError,
    demographic_subgroups,
    load_3mdbench,
    load_agentclinic,
    load_cases,
    load_medagent_cases,
)
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING, SHARED_DATA

AGENTCLINIC = SHARED_DATA / "agentclinic" / "agentclinic_medqa.jsonl"
AGENTCLINIC_EXTENDED = SHARED_DATA / "agentclinic" / "agentclinic_medqa_extended.jsonl"
DIAGNOSES_34 = SHARED_DATA / "3mdbench" / "diagnoses_34.json"


def _raw_cases(path: Path) -> list[dict]:
    return [json.loads(line)["OSCE_Examination"] for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@pytest.mark.parametrize(("path", "count"), [(AGENTCLINIC, 107), (AGENTCLINIC_EXTENDED, 214)])
def test_agentclinic_files_load_with_the_role_split(path: Path, count: int) -> None:
    cases = load_cases(path)
    raw = _raw_cases(path)
    assert len(cases) == len(raw) == count
    assert len({case.case_id for case in cases}) == count
    assert cases[0].case_id == f"{path.stem}-0001" and cases[-1].case_id == f"{path.stem}-{count:04d}"
    for case, source in zip(cases, raw, strict=True):
        actor = source["Patient_Actor"]
        assert case.source == "agentclinic"
        assert case.diagnosis == source["Correct_Diagnosis"].strip()
        assert case.objective == source["Objective_for_Doctor"]
        assert case.patient.demographics == actor["Demographics"]
        assert case.patient.history == actor["History"]
        primary = actor["Symptoms"].get("Primary_Symptom")
        if primary:
            assert case.patient.primary_symptom == primary
            assert case.patient.secondary_symptoms == actor["Symptoms"]["Secondary_Symptoms"]
        else:  # the one case without symptoms opens with its history's first sentence
            assert actor["History"].startswith(case.patient.primary_symptom)
        assert case.examiner.physical_examination == source.get("Physical_Examination_Findings", {})
        assert case.examiner.test_results == source.get("Test_Results", {})
        assert case.images == [] and case.temperament is None
    assert load_agentclinic(path) == cases  # stable across loads


def test_agentclinic_nested_patient_fields_become_labelled_text() -> None:
    case = load_agentclinic(AGENTCLINIC)[17]  # line 18: list history plus Current_Medications outside the schema
    raw = _raw_cases(AGENTCLINIC)[17]["Patient_Actor"]
    assert isinstance(raw["Past_Medical_History"], list)
    for item in [*raw["Past_Medical_History"], *raw["Current_Medications"]]:
        assert item in case.patient.past_medical_history
    assert "Current Medications: " in case.patient.past_medical_history


@pytest.mark.parametrize(("text", "expected"), [
    ("35-year-old female", {"age_band": "30-39", "sex": "female"}),
    ("70-year-old man accompanied by his wife", {"age_band": "70-79", "sex": "male"}),
    ("8-month-old boy", {"age_band": "0-9", "sex": "male"}),
    ("Newborn, born at 33 weeks of gestation", {"age_band": "0-9"}),
    ("23-year-old college student", {"age_band": "20-29"}),
    ("a patient of unknown age", {}),
])
def test_subgroups_only_when_stated(text: str, expected: dict[str, str]) -> None:
    assert demographic_subgroups(text) == expected


def test_agentclinic_subgroups_on_the_real_file() -> None:
    cases = load_agentclinic(AGENTCLINIC)
    first = cases[0]  # "35-year-old female"
    assert first.subgroups == {"age_band": "30-39", "sex": "female"}
    assert sum("sex" in case.subgroups for case in cases) > 90


def test_malformed_agentclinic_line_names_line_and_field_not_content(tmp_path: Path) -> None:
    lines = AGENTCLINIC.read_text(encoding="utf-8").splitlines()[:3]
    broken = json.loads(lines[1])
    secret = broken["OSCE_Examination"].pop("Correct_Diagnosis")
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join([lines[0], "", json.dumps(broken), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(CaseFileError) as caught:
        load_agentclinic(path)
    assert caught.value.line == 3 and caught.value.field == "OSCE_Examination.Correct_Diagnosis"
    assert caught.value.message.startswith("cases.jsonl:3: OSCE_Examination.Correct_Diagnosis")
    assert secret not in caught.value.message and str(tmp_path) not in caught.value.message

    path.write_text(lines[0] + "\n" + lines[1][:-40] + "\n", encoding="utf-8")
    with pytest.raises(CaseFileError) as caught:
        load_agentclinic(path)
    assert caught.value.line == 2 and "not valid JSON" in caught.value.message
    assert lines[1][-80:-40] not in caught.value.message
    assert caught.value.code == "case_file_error" and isinstance(caught.value, ConfigurationError)


# -- 3MDBench --------------------------------------------------------------------------------

def _3mdbench_rows() -> list[dict[str, object]]:
    return [
        {"general_complaint": "My skin itches", "complaints": "Red raised welts on the arms since yesterday.",
         "diagnosis": "hives", "personality": "choleric"},
        {"general_complaint": "My eye is sore", "complaints": "A painful lump on the upper eyelid.",
         "diagnosis": "stye", "personality": "Melancholic"},
    ]


def test_3mdbench_parquet_writes_each_image_once(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [NIH_CARDIOMEGALY.read_bytes(), NIH_NO_FINDING.read_bytes()]
    rows = [{**row, "image": {"bytes": data, "path": None}} for row, data in zip(_3mdbench_rows(), images, strict=True)]
    rows.append({**rows[0], "image": {"bytes": images[0], "path": "again.png"}})  # same bytes as row 1
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    cache = tmp_path / "image-cache"
    cases = load_cases(path, image_cache=cache)
    assert [case.case_id for case in cases] == [f"{path.stem}-{n:04d}" for n in (1, 2, 3)]
    assert [case.temperament for case in cases] == ["choleric", "melancholic", "choleric"]
    assert cases[0].patient.primary_symptom == cases[0].patient.opening == "My skin itches"
    assert cases[1].patient.history == "A painful lump on the upper eyelid." and cases[1].diagnosis == "stye"
    assert all(case.label_set == "3mdbench-34" and case.source == "3mdbench" for case in cases)
    assert cases[0].images == cases[2].images and cases[0].images != cases[1].images
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for c in cases[:2] for p in c.images)
    with Image.open(cases[1].images[0]) as cached, Image.open(NIH_NO_FINDING) as original:  # re-encoded, same pixels
        assert np.array_equal(np.asarray(cached), np.asarray(original)) and cases[1].images[0].suffix == ".png"
    assert load_3mdbench(path, image_cache=cache) == cases  # the second load reuses the cached files
    with pytest.raises(ConfigurationError, match="image_cache"):
        load_3mdbench(path)


@pytest.mark.parametrize("table", ["cases.jsonl", "cases.csv", "metadata.jsonl"])
def test_3mdbench_folder_layouts(tmp_path: Path, table: str) -> None:
    folder = tmp_path / "bench"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(NIH_CARDIOMEGALY.read_bytes())
    rows = [{**row, "id": f"id-{n}", "image": "images/a.png"} for n, row in enumerate(_3mdbench_rows())]
    if table == "metadata.jsonl":  # Hugging Face imagefolder names the image column file_name
        rows = [{**{k: v for k, v in row.items() if k != "image"}, "file_name": row["image"]} for row in rows]
    if table.endswith(".csv"):
        with (folder / table).open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        (folder / table).write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    cases = load_cases(folder)
    assert [case.case_id for case in cases] == ["id-0", "id-1"]
    assert cases[0].images == [(folder / "images" / "a.png").resolve()]
    assert cases[1].temperament == "melancholic" and cases[0].diagnosis == "hives"


def test_3mdbench_errors_name_row_and_field(tmp_path: Path) -> None:
    rows = _3mdbench_rows()
    rows[1]["personality"] = "cheerful"
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps({**row, "image": "missing.png"}) for row in rows), encoding="utf-8")
    with pytest.raises(CaseFileError) as caught:
        load_3mdbench(path)
    assert (caught.value.line, caught.value.field) == (1, "image") and "missing.png" not in caught.value.message
    (tmp_path / "a.png").write_bytes(NIH_NO_FINDING.read_bytes())
    path.write_text("\n".join(json.dumps({**row, "image": "a.png"}) for row in rows), encoding="utf-8")
    with pytest.raises(CaseFileError) as caught:
        load_3mdbench(path)
    assert (caught.value.line, caught.value.field) == (2, "personality") and "cheerful" not in caught.value.message


# -- medagent's format and the built-in set ---------------------------------------------------

def test_own_format_resolves_resources_and_relative_images(tmp_path: Path) -> None:
    (tmp_path / "scan.png").write_bytes(NIH_CARDIOMEGALY.read_bytes())
    (tmp_path / "labels.yaml").write_text("name: mine\nlabels: [{name: cardiomegaly, synonyms: [big heart]}]\n",
                                          encoding="utf-8")
    path = tmp_path / "cases.yaml"
    path.write_text(textwrap.dedent("""\
        label_set: labels.yaml
        cases:
          - case_id: one
            patient: {primary_symptom: Short of breath}
            images: ["pydicom:CT_small.dcm", scan.png, "nibabel:anatomical.nii"]
            diagnosis: cardiomegaly
            temperament: sanguine
        """), encoding="utf-8")
    (case,) = load_cases(path)
    import pydicom.data

    assert case.images == [Path(str(pydicom.data.get_testdata_file("CT_small.dcm"))), (tmp_path / "scan.png").resolve(),
                           case.images[2]]
    assert case.images[2].name == "anatomical.nii" and case.images[2].is_file()
    assert case.label_set == str((tmp_path / "labels.yaml").resolve())
    assert label_set_named(case.label_set).normalise("a big heart") == "cardiomegaly"


@pytest.mark.parametrize(("body", "line", "field"), [
    ("  - case_id: one\n    patient: {primary_symptom: x}\n    diagnosis: d\n    temperament: grumpy\n",
     6, "cases[0].temperament"),
    ("  - case_id: one\n    patient: {primary_symptom: x}\n    diagnosis: d\n    images: [secret-name.png]\n",
     6, "cases[0].images[0]"),
    (("  - case_id: one\n    patient: {primary_symptom: x}\n    diagnosis: d\n"
      "  - case_id: one\n    patient: {primary_symptom: y}\n    diagnosis: d\n"), 6, "cases[1].case_id"),
    ("  - case_id: one\n    diagnosis: d\n", 3, "cases[0].patient"),
])
def test_own_format_errors_name_line_and_field(tmp_path: Path, body: str, line: int, field: str) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text("label_set: medagent-builtin\ncases:\n" + body, encoding="utf-8")
    with pytest.raises(CaseFileError) as caught:
        load_medagent_cases(path)
    assert (caught.value.line, caught.value.field) == (line, field)
    assert caught.value.message.startswith(f"cases.yaml:{line}: {field}:")
    assert "grumpy" not in caught.value.message and "secret-name" not in caught.value.message


def test_builtin_cases_load_and_their_images_open(loader: ImageLoader) -> None:
    cases = builtin_cases()
    labels = builtin_label_set()
    assert 5 <= len(cases) <= 6 and len({case.case_id for case in cases}) == len(cases)
    assert {case.temperament for case in cases} == set(TEMPERAMENTS)
    assert len({case.subgroups["age_band"] for case in cases}) >= 4
    assert {case.subgroups["sex"] for case in cases} == {"female", "male"}
    for case in cases:
        assert case.label_set == "medagent-builtin" and case.source == "medagent"
        assert labels.normalise(case.diagnosis) == case.diagnosis
        assert all(labels.normalise(synonym) == case.diagnosis for synonym in case.synonyms)
        assert case.images and not case.examiner.is_empty()
        for image in case.images:
            record = loader.load(image)
            assert record.pixels.size > 0
    assert builtin_cases() == cases


def test_label_sets_by_name(tmp_path: Path) -> None:
    assert label_set_named("medagent-builtin") == builtin_label_set()
    three = label_set_named("3mdbench-34", [tmp_path, SHARED_DATA])
    assert three.name == "3mdbench-34" and three.closed and len(three.labels) == 34
    assert three.normalise("Allergic contact dermatitis on the hands") == "allergic contact dermatitis"
    with pytest.raises(UnknownLabelSet, match="diagnoses_34.json"):
        label_set_named("3mdbench-34", [tmp_path])
    (tmp_path / "skin.json").write_text(json.dumps({"name": "skin", "labels": [
        {"name": "hives", "synonyms": ["urticaria"]}, {"name": "eczema"}]}), encoding="utf-8")
    assert label_set_named("skin.json", [tmp_path]).normalise("Urticaria") == "hives"
    assert len(label_set_named(str(DIAGNOSES_34)).labels) == 34
    (tmp_path / "bad.yaml").write_text("name: bad\nlabels: []\n", encoding="utf-8")
    with pytest.raises(CaseFileError, match="bad.yaml: labels"):
        label_set_named("bad.yaml", [tmp_path])
    with pytest.raises(UnknownLabelSet, match="medagent-builtin"):
        label_set_named("no-such-set")


def test_open_label_set_from_agentclinic_cases() -> None:
    cases = load_agentclinic(AGENTCLINIC)
    labels = open_label_set(cases)
    assert not labels.closed and labels.name == "open"
    assert {labels.normalise(case.diagnosis) for case in cases} == set(labels.names)
    assert all(labels.normalise(case.diagnosis) is not None for case in cases)
    builtin = open_label_set(builtin_cases(), name="demo")
    assert builtin.normalise("torn meniscus") == "meniscal tear"
