"""Question layouts, part A: medagent's manifest, VQA-RAD, SLAKE, PMC-VQA and GMAI-MMBench, each built in its
published layout from the shared NIH chest X-rays (and pydicom's CT), loaded detected and named; malformed rows
located without their values, skipped and counted on request; embedded images cached de-identified, once."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from medagent.imaging import Deidentifier
from medagent.questions.layouts import gmai_mmbench
from medagent.questions.layouts.base import QuestionFileError
from medagent.questions.loading import LAYOUT_MODULES, QuestionSet, detect_layout, load_questions, peek_columns
from medagent.questions.model import LAYOUTS
from medagent.yaml_located import StudyConfigError
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING, TEST_SECRET

PHI = [b"Doe^Jane", b"MRN-123456"]
SECRET = "SECRET-7f3a"  # planted in malformed cells: no error may repeat it


def _load(source: Path, layout: str = "auto", **options: Any) -> QuestionSet:
    return load_questions(source, layout, image_cache=source.parent / "home" / "question-images",  # type: ignore[arg-type]
                          deidentifier=Deidentifier(TEST_SECRET), **options)


def _both_ways(source: Path, layout: str) -> QuestionSet:
    """Detected and named, the same questions."""
    assert detect_layout(source) == layout
    detected, named = _load(source), _load(source, layout)
    assert detected == named and detected.layout == layout and not detected.skipped
    return detected


def _copy(image: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    return target


def _png_with_phi() -> bytes:
    info = PngInfo()
    info.add_text("Comment", "Doe^Jane MRN-123456")
    out = io.BytesIO()
    with Image.open(NIH_NO_FINDING) as image:
        image.crop((0, 0, 128, 128)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _dicom_with_phi(ct: Path) -> bytes:
    dataset = pydicom.dcmread(ct)
    dataset.PatientName, dataset.PatientID = "Doe^Jane", "MRN-123456"
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def _write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _assert_cached_privately(cache: Path, count: int) -> None:
    files = sorted(cache.iterdir())
    assert len(files) == count
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not any(needle in path.read_bytes() for needle in PHI)


# -- each layout, built as published ---------------------------------------------------------------------------


def test_manifest_csv_with_an_options_object_option_columns_and_several_images(tmp_path: Path) -> None:
    _copy(NIH_CARDIOMEGALY, tmp_path / "cxr" / "a.png")
    _copy(NIH_NO_FINDING, tmp_path / "cxr" / "b.png")
    blank = {f"option_{letter}": "" for letter in "abc"}
    rows = [
        {"id": "q1", "image": "cxr/a.png", "question": "What is shown?", "answer": "b",
         "options": json.dumps({"A": "Normal", "B": "Cardiomegaly"}), **blank, "question_type": "diagnosis",
         "modality": "X-ray", "body_part": "chest", "case_id": "p1", "pair_id": "", "pair_role": ""},
        {"id": "q2", "image": "cxr/a.png; cxr/b.png", "question": "Which is larger?", "answer": "A", "options": "",
         "option_a": "first", "option_b": "second", "option_c": "same", "question_type": "", "modality": "X-ray",
         "body_part": "", "case_id": "p1", "pair_id": "set-1", "pair_role": "left"},
        {"id": "q3", "image": "cxr/b.png", "question": "Is the heart enlarged?", "answer": "no", "options": "",
         **blank, "question_type": "", "modality": "", "body_part": "", "case_id": "", "pair_id": "", "pair_role": ""},
    ]
    loaded = _both_ways(_write_csv(tmp_path / "questions.csv", rows), "manifest")
    first, second, third = loaded.questions
    assert first.options == {"A": "Normal", "B": "Cardiomegaly"} and first.answer == "B"
    assert first.gold_text() == "Cardiomegaly" and first.chance == 0.5 and first.body_part == "chest"
    assert second.images == [(tmp_path / "cxr" / name).resolve() for name in ("a.png", "b.png")]
    assert second.options == {"A": "first", "B": "second", "C": "same"} and second.pair_role == "left"
    assert third.kind == "yes_no" and third.case_id is None and third.options == {}
    spreadsheet = _write_csv(tmp_path / "exported.csv", rows, encoding="utf-8-sig")  # a byte-order mark before "id"
    assert _both_ways(spreadsheet, "manifest").questions == loaded.questions


def test_manifest_jsonl_with_an_image_list_and_options_as_an_object_or_list(tmp_path: Path) -> None:
    _copy(NIH_CARDIOMEGALY, tmp_path / "a.png")
    lines = [{"id": 1, "image": ["a.png"], "question": "Finding?", "options": {"B": "effusion", "A": "cardiomegaly"},
              "answer": "a", "language": "en"},
             {"id": 2, "image": "a.png", "question": "Finding?", "options": ["cardiomegaly", "mass"], "answer": "B"}]
    source = tmp_path / "questions.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    first, second = _both_ways(source, "manifest").questions
    assert first.question_id == "1" and first.options == {"A": "cardiomegaly", "B": "effusion"}
    assert first.answer == "A" and first.language == "en"
    assert second.options == {"A": "cardiomegaly", "B": "mass"} and second.gold_text() == "mass"


def test_vqa_rad_hub_parquet_caches_embedded_images_deidentified_once(tmp_path: Path, pydicom_ct: Path) -> None:
    cardiomegaly, phi_png, phi_dicom = NIH_CARDIOMEGALY.read_bytes(), _png_with_phi(), _dicom_with_phi(pydicom_ct)
    rows = [{"image": {"bytes": cardiomegaly, "path": "synpic1.jpg"}, "question": "Is the heart enlarged?",
             "answer": "yes"},
            {"image": {"bytes": cardiomegaly, "path": "synpic1.jpg"}, "question": "What organ is shown?",
             "answer": "heart and lungs"},
            {"image": {"bytes": phi_png, "path": "synpic2.jpg"}, "question": "Is this normal?", "answer": "No"},
            {"image": {"bytes": phi_dicom, "path": "synpic3.dcm"}, "question": "What modality?", "answer": "CT"}]
    source = _parquet(tmp_path / "test-00000-of-00001.parquet", rows)
    questions = _both_ways(source, "vqa_rad").questions
    assert [q.question_id for q in questions] == [f"{source.stem}-{n:05d}" for n in (1, 2, 3, 4)]
    assert [q.question_type for q in questions] == ["closed", "open", "closed", "open"]
    assert questions[0].images == questions[1].images and questions[0].case_id == questions[1].case_id
    cache = tmp_path / "home" / "question-images"
    _assert_cached_privately(cache, 3)  # four questions, three distinct images
    with Image.open(questions[0].images[0]) as cached, Image.open(NIH_CARDIOMEGALY) as original:
        assert np.array_equal(np.asarray(cached), np.asarray(original))
    with Image.open(questions[2].images[0]) as cached_png:
        assert not cached_png.info.get("Comment")
    assert pydicom.dcmread(questions[3].images[0]).PatientName != "Doe^Jane"


def test_vqa_rad_original_json_with_its_image_folder(tmp_path: Path) -> None:
    _copy(NIH_CARDIOMEGALY, tmp_path / "VQA_RAD Image Folder" / "synpic100.png")
    records = [{"qid": 1, "image_name": "synpic100.png", "question": "Is there cardiomegaly?", "answer": "Yes",
                "answer_type": "CLOSED", "question_type": "ABN", "image_organ": "CHEST", "phrase_type": "test_freeform"},
               {"qid": 2, "image_name": "synpic100.png", "question": "Which organ?", "answer": "heart",
                "answer_type": "OPEN ", "question_type": "ORGAN", "image_organ": "CHEST", "phrase_type": "freeform"}]
    source = tmp_path / "VQA_RAD Dataset Public.json"
    source.write_text(json.dumps(records))
    first, second = _both_ways(source, "vqa_rad").questions
    assert (first.question_id, first.question_type, first.category, first.body_part) == ("1", "closed", "ABN", "CHEST")
    assert (second.question_type, second.source, first.source) == ("open", "train", "test")
    assert first.images == [(tmp_path / "VQA_RAD Image Folder" / "synpic100.png").resolve()]
    assert first.case_id == second.case_id == "synpic100"
    renamed = source.rename(tmp_path / "testset.json")  # the split files of the same release: found by their keys
    assert detect_layout(renamed) == "vqa_rad"


def test_slake_split_json_with_its_imgs_folder(tmp_path: Path) -> None:
    _copy(NIH_CARDIOMEGALY, tmp_path / "imgs" / "xmlab102" / "source.png")
    records = [{"img_id": 102, "img_name": "xmlab102/source.png", "question": "Which organ is abnormal?",
                "answer": "Heart", "q_lang": "en", "location": "Chest", "modality": "X-Ray", "answer_type": "OPEN",
                "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 11934},
               {"img_id": 102, "img_name": "xmlab102/source.png", "question": "心脏是否增大？", "answer": "是",
                "q_lang": "zh", "location": "胸部", "modality": "X-Ray", "answer_type": "CLOSED",
                "base_type": "vqa", "content_type": "Abnormality", "triple": ["vhead", "_", "_"], "qid": 11935}]
    source = tmp_path / "test.json"
    source.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    english, chinese = _both_ways(source, "slake").questions
    assert (english.question_id, english.category, english.body_part, english.modality) == (
        "11934", "Organ", "Chest", "X-Ray")
    assert (english.question_type, chinese.question_type, chinese.language) == ("open", "closed", "zh")
    assert english.case_id == chinese.case_id == "102" and chinese.answer == "是"
    assert english.images == [(tmp_path / "imgs" / "xmlab102" / "source.png").resolve()]


def test_pmc_vqa_csv_with_lettered_choices_and_a_figures_folder(tmp_path: Path) -> None:
    _copy(NIH_CARDIOMEGALY, tmp_path / "figures" / "PMC100_F1.png")
    _copy(NIH_NO_FINDING, tmp_path / "figures" / "PMC200_F2.png")
    rows = [{"Figure_path": "PMC100_F1.png", "Question": "What does the image show?", "Answer": "Cardiomegaly",
             "Choice A": "A:Pneumothorax ", "Choice B": " B:Cardiomegaly", "Choice C": " C:Effusion",
             "Choice D": " D:Normal chest", "Answer_label": "B"},
            {"Figure_path": "PMC200_F2.png", "Question": "What imaging modality is used?", "Answer": "X-ray",
             "Choice A": "A:CT", "Choice B": " B:MRI", "Choice C": " C:X-ray", "Choice D": " D:Ultrasound",
             "Answer_label": ""}]
    first, second = _both_ways(_write_csv(tmp_path / "test_2.csv", rows), "pmc_vqa").questions
    assert first.options == {"A": "Pneumothorax", "B": "Cardiomegaly", "C": "Effusion", "D": "Normal chest"}
    assert first.answer == "B" and second.answer == "C" and second.chance == 0.25  # the label from the Answer's text
    assert first.question_id == "test_2-000001" and first.case_id == "PMC100_F1"


def test_gmai_mmbench_tsv_with_base64_images_lists_and_repeated_image_references(tmp_path: Path) -> None:
    cardiomegaly = base64.b64encode(NIH_CARDIOMEGALY.read_bytes()).decode()
    no_finding = base64.b64encode(NIH_NO_FINDING.read_bytes()).decode()
    common = {"category": "Disease Diagnosis", "l2-category": "", "modality": "X-Ray",
              "clinical vqa task": "Disease Diagnosis", "department": "Cardiology", "hint": ""}
    rows = [{"index": "0", "question": "Which finding?", "A": "Cardiomegaly", "B": "Normal", "C": "Mass", "D": "",
             "E": "", "answer": "A", "image": cardiomegaly, **common},
            {"index": "1", "question": "Is this normal?", "A": "yes", "B": "no", "C": "", "D": "", "E": "",
             "answer": "B", "image": "0", **common},  # VLMEvalKit: the image of row index 0
            {"index": "2", "question": "Which image is normal?", "A": "first", "B": "second", "C": "", "D": "",
             "E": "", "answer": "B", "image": json.dumps([cardiomegaly, no_finding]), **common, "hint": "Two views."}]
    source = _write_csv(tmp_path / "GMAI-MMBench_VAL.tsv", rows, delimiter="\t")
    first, second, third = _both_ways(source, "gmai_mmbench").questions
    assert first.options == {"A": "Cardiomegaly", "B": "Normal", "C": "Mass"} and first.chance == pytest.approx(1 / 3)
    assert (first.modality, first.category, first.question_type) == ("X-Ray", "Disease Diagnosis", "Disease Diagnosis")
    assert second.images == first.images and second.case_id == first.case_id
    assert third.images[0] == first.images[0] and len(third.images) == 2
    assert third.question == "Hint: Two views.\nWhich image is normal?"
    _assert_cached_privately(tmp_path / "home" / "question-images", 2)


# -- malformed rows: located (file, row, field), never quoting the cell, skipped and counted on request ----------


def _manifest_bad(tmp_path: Path, kind: str) -> tuple[Path, int, str]:
    _copy(NIH_CARDIOMEGALY, tmp_path / "data" / "a.png")
    _copy(NIH_CARDIOMEGALY, tmp_path / f"{SECRET}.png")  # exists, but outside the image folder
    good = {"id": "q1", "image": "a.png", "question": "Finding?", "options": '{"A": "x", "B": "y"}', "answer": "A"}
    bad = {"missing field": {"question": ""}, "bad answer letter": {"answer": SECRET},
           "bad option letter": {"options": json.dumps({"A": "x", "7": SECRET})},
           "missing image": {"image": f"{SECRET}-absent.png"}, "escaping path": {"image": f"../{SECRET}.png"}}[kind]
    field = {"missing field": "question", "bad answer letter": "answer", "bad option letter": "options"}.get(kind, "image")
    return _write_csv(tmp_path / "data" / "questions.csv", [good, {**good, "id": "q2", **bad}]), 2, field


def _vqa_rad_bad(tmp_path: Path, kind: str) -> tuple[Path, int, str]:
    if kind == "bad embedded image":
        rows = [{"image": {"bytes": NIH_CARDIOMEGALY.read_bytes(), "path": "a.jpg"}, "question": "q?", "answer": "yes"},
                {"image": {"bytes": f"{SECRET} is no image".encode(), "path": "b.jpg"}, "question": "q?",
                 "answer": "no"}]
        return _parquet(tmp_path / "test-00000-of-00001.parquet", rows), 2, "image"
    _copy(NIH_CARDIOMEGALY, tmp_path / "data" / "images" / "a.png")
    _copy(NIH_CARDIOMEGALY, tmp_path / f"{SECRET}.png")
    good: dict[str, Any] = {"qid": 1, "image_name": "a.png", "question": "q?", "answer": "yes", "answer_type": "CLOSED"}
    changes: dict[str, dict[str, Any]] = {"missing field": {"answer": None},
                                          "missing image": {"image_name": f"{SECRET}.png"},
                                          "escaping path": {"image_name": f"../../{SECRET}.png"}}
    bad = changes[kind]
    source = tmp_path / "data" / "testset.json"
    source.write_text(json.dumps([good, {**good, "qid": 2, **bad}]))
    return source, 2, "answer" if kind == "missing field" else "image_name"


def _slake_bad(tmp_path: Path, kind: str) -> tuple[Path, int, str]:
    _copy(NIH_CARDIOMEGALY, tmp_path / "data" / "imgs" / "xmlab1" / "source.png")
    _copy(NIH_CARDIOMEGALY, tmp_path / f"{SECRET}.png")  # exists, but outside the image folder
    good: dict[str, Any] = {"img_id": 1, "img_name": "xmlab1/source.png", "question": "q?", "answer": "Yes", "q_lang": "en",
            "answer_type": "CLOSED", "qid": 1}
    bad: dict[str, Any] = {"missing field": {"question": None}, "bad answer type": {"answer_type": SECRET},
           "missing image": {"img_name": f"xmlab1/{SECRET}.png"}, "escaping path": {"img_name": f"../../{SECRET}.png"}}
    field = {"missing field": "question", "bad answer type": "answer_type"}.get(kind, "img_name")
    source = tmp_path / "data" / "test.json"
    source.write_text(json.dumps([good, {**good, "qid": 2, **bad[kind]}]))
    return source, 2, field


def _pmc_vqa_bad(tmp_path: Path, kind: str) -> tuple[Path, int, str]:
    _copy(NIH_CARDIOMEGALY, tmp_path / "data" / "images" / "PMC1_F1.png")
    _copy(NIH_CARDIOMEGALY, tmp_path / f"{SECRET}.png")
    good = {"Figure_path": "PMC1_F1.png", "Question": "q?", "Answer": "x", "Choice A": "A:x", "Choice B": " B:y",
            "Choice C": " C:z", "Choice D": " D:w", "Answer_label": "A"}
    bad = {"missing field": {"Question": ""}, "bad answer letter": {"Answer_label": "SECRET7"},
           "bad option letter": {"Choice B": f" C:{SECRET}"}, "missing image": {"Figure_path": f"{SECRET}.png"},
           "escaping path": {"Figure_path": f"../../{SECRET}.png"}}[kind]
    field = {"missing field": "Question", "bad answer letter": "Answer_label",
             "bad option letter": "Choice B"}.get(kind, "Figure_path")
    return _write_csv(tmp_path / "data" / "test.csv", [good, {**good, **bad}]), 2, field


def _gmai_bad(tmp_path: Path, kind: str) -> tuple[Path, int, str]:
    image = base64.b64encode(NIH_CARDIOMEGALY.read_bytes()).decode()
    good = {"index": "10", "question": "q?", "A": "x", "B": "y", "C": "", "answer": "A", "image": image,
            "category": "c", "modality": "X-Ray"}
    bad = {"missing field": {"question": ""}, "bad answer letter": {"answer": "C"},
           "bad base64": {"image": f"{SECRET}%" * 20}, "missing image": {"image": SECRET},
           "bad option letter": {"B": "", "C": SECRET}}[kind]
    field = {"missing field": "question", "bad answer letter": "answer", "bad option letter": "A"}.get(kind, "image")
    return _write_csv(tmp_path / "GMAI-MMBench_VAL.tsv", [good, {**good, "index": "11", **bad}], "\t"), 2, field


MALFORMED: list[tuple[str, Callable[[Path, str], tuple[Path, int, str]], str]] = [
    *(("manifest", _manifest_bad, kind) for kind in ("missing field", "bad answer letter", "bad option letter",
                                                     "missing image", "escaping path")),
    *(("vqa_rad", _vqa_rad_bad, kind) for kind in ("bad embedded image", "missing field", "missing image",
                                                   "escaping path")),
    *(("slake", _slake_bad, kind) for kind in ("missing field", "bad answer type", "missing image", "escaping path")),
    *(("pmc_vqa", _pmc_vqa_bad, kind) for kind in ("missing field", "bad answer letter", "bad option letter",
                                                   "missing image", "escaping path")),
    *(("gmai_mmbench", _gmai_bad, kind) for kind in ("missing field", "bad answer letter", "bad option letter",
                                                     "bad base64", "missing image")),
]


PROBLEMS = {"missing field": "required field is missing", "bad answer letter": "must be the letter",
            "bad option letter": "letter|gaps", "missing image": "not found|short image cell",
            "escaping path": "outside the dataset's image folder", "bad base64": "not base64",
            "bad embedded image": "not DICOM, PNG or JPEG", "bad answer type": "OPEN or CLOSED"}


@pytest.mark.parametrize(("layout", "build", "kind"), MALFORMED, ids=[f"{m[0]}-{m[2]}" for m in MALFORMED])
def test_a_malformed_row_is_located_without_its_value_and_skipped_on_request(
        tmp_path: Path, layout: str, build: Callable[[Path, str], tuple[Path, int, str]], kind: str) -> None:
    source, row, field = build(tmp_path, kind)
    with pytest.raises(QuestionFileError) as caught:
        _load(source, layout)
    error = caught.value
    assert (error.file, error.row, error.field) == (source.name, row, field)
    assert re.search(PROBLEMS[kind], error.message)
    shown = f"{error} {error.to_dict()}"
    assert SECRET not in shown and "SECRET7" not in shown and str(tmp_path) not in shown
    loaded = _load(source, layout, skip_malformed=True)
    assert len(loaded.questions) == 1 and loaded.questions[0].answer in ("A", "yes", "Yes")
    assert [(s.file, s.row, s.field) for s in loaded.skipped] == [(source.name, row, field)]
    assert SECRET not in str(loaded.skipped)


# -- the dispatch ------------------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, ids: list[str]) -> Path:
    _copy(NIH_CARDIOMEGALY, tmp_path / "a.png")
    rows = [{"id": qid, "image": "a.png", "question": "Enlarged heart?", "answer": "yes"} for qid in ids]
    return _write_csv(tmp_path / "questions.csv", rows)


def test_a_repeated_question_id_is_located_and_may_be_skipped(tmp_path: Path) -> None:
    source = _manifest(tmp_path, ["q1", "q2", "q1"])
    with pytest.raises(QuestionFileError) as caught:
        _load(source)
    assert (caught.value.file, caught.value.row, caught.value.field) == ("questions.csv", 3, "question_id")
    loaded = _load(source, skip_malformed=True)
    assert [q.question_id for q in loaded.questions] == ["q1", "q2"]
    assert [(s.row, s.field) for s in loaded.skipped] == [(3, "question_id")]


def test_more_questions_than_the_study_allows_is_refused_typed(tmp_path: Path) -> None:
    source = _manifest(tmp_path, ["q1", "q2", "q3"])
    assert len(_load(source, max_questions=3).questions) == 3
    with pytest.raises(StudyConfigError) as caught:
        _load(source, max_questions=2)
    assert caught.value.field == "dataset.max_cases"


def test_every_layout_has_a_module_and_unknown_files_or_names_list_the_layouts(tmp_path: Path) -> None:
    assert set(LAYOUT_MODULES) == set(LAYOUTS)
    assert all(module == f"medagent.questions.layouts.{name}" for name, module in LAYOUT_MODULES.items())
    unknown = tmp_path / "notes.csv"
    unknown.write_text("patient,finding\nx,y\n")
    for attempt in (lambda: detect_layout(unknown), lambda: _load(unknown), lambda: _load(unknown, "vqa-rad")):
        with pytest.raises(QuestionFileError) as caught:
            attempt()
        assert caught.value.field == "layout" and all(name in caught.value.message for name in LAYOUTS)
    with pytest.raises(QuestionFileError, match="no such"):
        detect_layout(tmp_path / "absent.json")


def test_a_layout_module_not_installed_is_skipped_by_detection_and_refused_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _manifest(tmp_path, ["q1"])
    monkeypatch.setitem(LAYOUT_MODULES, "probmed", "medagent.questions.layouts.not_installed_here")
    assert detect_layout(source) == "manifest"
    with pytest.raises(QuestionFileError, match="not available"):
        _load(source, "probmed")


def test_detection_reads_only_the_first_record_and_loading_locates_what_follows(tmp_path: Path) -> None:
    _copy(NIH_CARDIOMEGALY, tmp_path / "imgs" / "x" / "source.png")
    first = {"img_id": 1, "img_name": "x/source.png", "question": "q?", "answer": "Yes", "q_lang": "en", "qid": 1}
    source = tmp_path / "train.json"
    source.write_text("[" + json.dumps(first) + "," + " " * 70_000 + "{broken")
    assert peek_columns(source) >= {"img_name", "q_lang"} and detect_layout(source) == "slake"
    with pytest.raises(QuestionFileError, match="not valid JSON") as caught:
        _load(source)
    assert caught.value.file == "train.json"


def test_table_reader_limits_reach_the_caller_as_question_file_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _manifest(tmp_path, ["q1"])
    with source.open("a") as stream:
        stream.write("q2,a.png," + "x" * (1024 * 1024 + 10) + ",yes\n")
    with pytest.raises(QuestionFileError) as caught:
        _load(source)
    assert caught.value.line == 3 and "longer than" in caught.value.message
    tsv, _, _ = _gmai_bad(tmp_path, "missing field")
    monkeypatch.setattr(gmai_mmbench, "MAX_ROW_CHARS", 10_000)  # an embedded image over the row bound
    with pytest.raises(QuestionFileError) as over:
        _load(tsv)
    assert over.value.field == "(row)" and over.value.line == 2 and "longer than 10000" in over.value.message
