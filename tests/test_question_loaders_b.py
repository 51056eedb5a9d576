"""Question loaders for ProbMed, MediConfusion, ChestAgentBench, MedXpertQA MM and OmniMedVQA: each test builds a
tiny copy of the layout's real files in tmp_path (the NIH chest X-rays as its images) and loads it; malformed rows
give located errors that never quote the cell, and are skipped and counted when the study asks."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from medagent.imaging.deid import Deidentifier
from medagent.questions.layouts import chestagentbench, mediconfusion, medxpertqa_mm, omnimedvqa, probmed
from medagent.questions.layouts.base import QuestionFileError, QuestionReader
from medagent.questions.loading import detect_layout, load_questions
from medagent.questions.model import Question
from medagent.simulators.threemdbench import image_writer

SECRET = "PHI-SECRET-7731"  # stands for a patient's data in a cell: no error message may repeat it

Record = dict[str, Any]


def _reader(tmp_path: Path, root: Path, *, skip: bool = False) -> QuestionReader:
    return QuestionReader(images_root=root, write_image=image_writer(tmp_path / "cache", Deidentifier(b"x" * 32)),
                          skip_malformed=skip)


def _copy(image: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in (".jpg", ".jpeg"):
        with Image.open(image) as original:
            original.convert("L").save(target, "JPEG")
    else:
        shutil.copyfile(image, target)
    return target


def _write_jsonl(path: Path, records: list[Record]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


# -- the layouts, as their real files look -----------------------------------------------------------------------


def probmed_records() -> list[Record]:
    chest, normal = "probmed/00000001_000.png", "probmed/00027426_000.png"
    return [
        {"id": 101, "i": 0, "image": chest, "image_type": "x-ray_chest", "qa_type": "modality_gt",
         "question": "Is this a Chest X-Ray? (please answer yes/no)", "answer": "yes", "src_dataset": "ChestX-ray14"},
        {"id": 101, "i": 1, "image": chest, "image_type": "x-ray_chest", "qa_type": "modality_hallu",
         "question": "Is this a CT Scan? (please answer yes/no)", "answer": "no", "src_dataset": "ChestX-ray14"},
        {"id": 101, "i": 2, "image": chest, "image_type": "x-ray_chest", "qa_type": "entity_gt_0",
         "question": "Is cardiomegaly present in the given chest x-ray? (please answer yes/no)", "answer": "yes"},
        {"id": 101, "i": 3, "image": chest, "image_type": "x-ray_chest", "qa_type": "entity_hallu_0",
         "question": "Is nodule present in the given chest x-ray? (please answer yes/no)", "answer": "no"},
        {"id": 102, "i": 4, "image": normal, "image_type": "x-ray_chest", "qa_type": "abnormality",
         "question": "Does this x-ray show any abnormality of the chest? (please answer yes/no)", "answer": "no"},
    ]


def build_probmed(root: Path, nih: list[Path], records: list[Record]) -> Path:
    for image in nih:
        _copy(image, root / "probmed" / image.name)
    return _write_json(root / "test.json", records)


def mediconfusion_records() -> list[Record]:
    def sample(local_1: int, local_2: int, first: str) -> Record:
        return {"im_1": f"train/radiology/images/ROCO_{local_1}.jpg", "im_2": f"train/radiology/images/ROCO_{local_2}.jpg",
                "im_1_local": local_1, "im_2_local": local_2, "cap_1": "caption one", "cap_2": "caption two",
                "category_1": ["Chest", "Cardiac"], "category_2": ["Chest"], "BiomedCLIP_sim": 0.92,
                "DINO_sim": 0.61, "question": "What is the size of the cardiac silhouette?",
                "option_A": "Enlarged", "option_B": "Normal", "im_1_correct": first,
                "im_2_correct": "B" if first == "A" else "A", "AI_question": "Is the heart enlarged?",
                "AI_option_A": "Yes", "AI_option_B": "No"}
    return [sample(20001, 20002, "A"), sample(20003, 20004, "B"), sample(20005, 20006, "A")]


def build_mediconfusion(root: Path, nih: list[Path], records: list[Record]) -> Path:
    for number in range(20001, 20007):
        _copy(nih[number % 2], root / "images" / f"{number}.jpg")
    return _write_json(root / "dataset.json", {str(10001 + index): record for index, record in enumerate(records)})


def chestagentbench_records() -> list[Record]:
    stem = "Based on Figure 1 and Figure 2, what is the most likely explanation of the cardiac contour?"
    return [
        {"question": f"{stem}\nA) Cardiomegaly\nB) Pericardial effusion\nC) Normal heart size\nD) Pneumothorax\n"
                     "E) Hiatal hernia\nF) Mediastinal mass",
         "answer": "A", "case_id": "11583", "question_id": "11583_1", "full_question_id": "11583_11583_1",
         "images": ["figures/11583/figure_1.jpg", "figures/11583/figure_2.jpg"], "categories":
         "detection,classification,relationship,reasoning", "type": "multiple choice", "explanation": "the report",
         "sections": "history,image_finding", "image_source_urls": ["https://www.eurorad.org/x.jpg"]},
        {"question": "In Figure 1, where is the finding?\n(A) Left lower lobe\n(B) Right upper lobe\n(C) Neither",
         "answer": "C) Neither", "case_id": "11583", "question_id": "11583_2", "full_question_id": "11583_11583_2",
         "images": ["figures/11583/figure_1.jpg"], "categories": "localization,comparison,relationship,reasoning",
         "type": "multiple choice", "explanation": "the report", "sections": "history", "image_source_urls": []},
        {"question": "Which finding does Figure 1 show? A. Normal study B. Cardiomegaly C. Effusion D. Nodule",
         "answer": "A", "case_id": "12001", "question_id": "12001_1", "full_question_id": "12001_12001_1",
         "images": ["figures/12001/figure_1.jpg"], "categories": "classification,characterization,diagnosis",
         "type": "multiple choice", "explanation": "the report", "sections": "history", "image_source_urls": []},
    ]


def build_chestagentbench(root: Path, nih: list[Path], records: list[Record]) -> Path:
    _copy(nih[0], root / "figures" / "11583" / "figure_1.jpg")
    _copy(nih[0], root / "figures" / "11583" / "figure_2.jpg")
    _copy(nih[1], root / "figures" / "12001" / "figure_1.jpg")
    return _write_jsonl(root / "metadata.jsonl", records)


def medxpertqa_records() -> list[Record]:
    choices = {"A": "Cardiomegaly", "B": "Pleural effusion", "C": "Pneumothorax", "D": "Atelectasis", "E": "Normal"}
    listed = " ".join(f"({letter}) {text}" for letter, text in choices.items())
    return [{"id": f"MM-{number}", "question": f"A 57-year-old man has dyspnea. What does the radiograph show?\n"
             f"Answer Choices: {listed}", "options": choices, "label": label, "images": images,
             "medical_task": "Diagnosis", "body_system": "Cardiovascular", "question_type": "Reasoning"}
            for number, label, images in ((0, "A", ["MM-0-a.png", "MM-0-b.png"]), (1, "E", ["MM-1-a.png"]),
                                          (2, "A", ["MM-2-a.png"]))]


def build_medxpertqa(root: Path, nih: list[Path], records: list[Record]) -> Path:
    for name, image in (("MM-0-a.png", nih[0]), ("MM-0-b.png", nih[1]), ("MM-1-a.png", nih[1]),
                        ("MM-2-a.png", nih[0])):
        _copy(image, root / "images" / name)
    _write_jsonl(root / "MM" / "dev.jsonl", records[:1])
    return _write_jsonl(root / "MM" / "test.jsonl", records)


def omnimedvqa_records(dataset: str = "Chest X-Ray PA") -> list[Record]:
    return [
        {"question_id": f"{dataset}_{number}", "question": question, "gt_answer": gold, "image_path": image,
         "modality_type": "X-Ray", "question_type": qtype, "dataset": dataset, **options}
        for number, (question, gold, image, qtype, options) in enumerate([
            ("What is the abnormality in this image?", "Cardiomegaly.", "Images/NIH/00000001_000.png",
             "Disease Diagnosis", {"option_A": "Pneumonia", "option_B": "cardiomegaly", "option_C": "Normal"}),
            ("Which imaging modality is this?", "X-ray", "Images/NIH/00027426_000.png", "Modality Recognition",
             {"option_A": "CT", "option_B": "MR", "option_C": "X-ray", "option_D": "Ultrasound"}),
            ("Is this chest radiograph normal?", "No, It's normal.", "Images/NIH/00027426_000.png",
             "Disease Diagnosis", {"option_A": "No, It's normal.", "option_B": "Yes, it shows cardiomegaly."}),
        ])]


def build_omnimedvqa(root: Path, nih: list[Path], records: list[Record]) -> Path:
    for image in nih:
        _copy(image, root / "Images" / "NIH" / image.name)
    folder = root / "QA_information" / "Open-access"
    other = [{key: value for key, value in record.items() if key != "modality_type"} | {"modality": "CT"}
             for record in omnimedvqa_records("Chest CT Scan")[:1]]  # one real file says modality
    _write_json(folder / "Chest CT Scan.json", other)
    return _write_json(folder / "Chest X-Ray PA.json", records)


@dataclass(frozen=True)
class Layout:
    module: ModuleType
    records: Callable[[], list[Record]]
    build: Callable[[Path, list[Path], list[Record]], Path]
    line_of_row_2: int | None  # JSONL files locate by line too; a whole-file JSON by record only


LAYOUTS = {
    "probmed": Layout(probmed, probmed_records, build_probmed, None),
    "mediconfusion": Layout(mediconfusion, mediconfusion_records, build_mediconfusion, None),
    "chestagentbench": Layout(chestagentbench, chestagentbench_records, build_chestagentbench, 2),
    "medxpertqa_mm": Layout(medxpertqa_mm, medxpertqa_records, build_medxpertqa, 2),
    "omnimedvqa": Layout(omnimedvqa, omnimedvqa_records, build_omnimedvqa, None),
}


def _built(name: str, tmp_path: Path, nih: list[Path], records: list[Record] | None = None) -> Path:
    layout = LAYOUTS[name]
    return layout.build(tmp_path / name, nih, layout.records() if records is None else records)


def _load(name: str, source: Path, tmp_path: Path, *, skip: bool = False,
          root: Path | None = None) -> tuple[list[Question], QuestionReader]:
    reader = _reader(tmp_path, root or (source if source.is_dir() else source.parent), skip=skip)
    return list(LAYOUTS[name].module.load(source, reader)), reader


# -- loading each layout ------------------------------------------------------------------------------------------


def test_probmed_pairs_each_ground_truth_question_with_its_hallucinated_twin(tmp_path: Path,
                                                                              nih_images: list[Path]) -> None:
    source = _built("probmed", tmp_path, nih_images)
    questions, reader = _load("probmed", source, tmp_path)
    by_type = {question.question_id: question for question in questions}
    assert list(by_type) == ["101:modality_gt", "101:modality_hallu", "101:entity_gt_0", "101:entity_hallu_0",
                             "102:abnormality"]
    truth, twin = by_type["101:modality_gt"], by_type["101:modality_hallu"]
    assert (truth.pair_id, truth.pair_role, twin.pair_id, twin.pair_role) == (
        "101:modality", "ground_truth", "101:modality", "adversarial")
    assert by_type["101:entity_gt_0"].pair_id == by_type["101:entity_hallu_0"].pair_id == "101:entity:0"
    assert by_type["102:abnormality"].pair_id is None and by_type["102:abnormality"].pair_role is None
    assert [q.answer for q in questions] == ["yes", "no", "yes", "no", "no"]
    assert all(q.kind == "yes_no" and q.chance == 0.5 for q in questions)
    assert (truth.modality, truth.body_part, truth.question_type, truth.case_id, truth.source) == (
        "x-ray", "chest", "modality", "101", "ChestX-ray14")
    assert truth.images == [(source.parent / "probmed" / "00000001_000.png").resolve()]
    assert reader.skipped == []
    # the folder holding test.json loads the same questions
    assert [q.question_id for q in _load("probmed", source.parent, tmp_path)[0]] == list(by_type)


def test_probmed_reads_the_answer_files_gt_ans_column(tmp_path: Path, nih_images: list[Path]) -> None:
    records = [{("gt_ans" if key == "answer" else key): value for key, value in record.items()}
               for record in probmed_records()]
    records[0]["gt_ans"] = "Yes."
    source = _built("probmed", tmp_path, nih_images, records)
    assert [q.answer for q in _load("probmed", source, tmp_path)[0]] == ["yes", "no", "yes", "no", "no"]


def test_mediconfusion_makes_two_questions_per_image_pair_each_with_its_own_image(tmp_path: Path,
                                                                                  nih_images: list[Path]) -> None:
    source = _built("mediconfusion", tmp_path, nih_images)
    questions, _ = _load("mediconfusion", source.parent, tmp_path)
    assert [q.question_id for q in questions] == [f"{sample}:image_{n}" for sample in (10001, 10002, 10003)
                                                  for n in (1, 2)]
    first, second = questions[:2]
    assert first.options == second.options == {"A": "Enlarged", "B": "Normal"}
    assert (first.answer, second.answer) == ("A", "B")
    assert (first.pair_id, first.pair_role, second.pair_id, second.pair_role) == (
        "10001", "image_1", "10001", "image_2")
    assert first.images == [(source.parent / "images" / "20001.jpg").resolve()]
    assert second.images == [(source.parent / "images" / "20002.jpg").resolve()]
    assert (first.category, second.category) == ("Chest, Cardiac", "Chest")
    assert first.case_id is None and second.case_id is None  # two patients: never one case's memory
    assert first.chance == 0.5


def test_mediconfusion_csv_with_roco_paths(tmp_path: Path, nih_images: list[Path]) -> None:
    """The CSV export (a leading index column, categories written as Python lists) with images found by their
    ROCO paths in the ROCO data folder."""
    records = mediconfusion_records()
    roco = tmp_path / "roco" / "data"
    for record in records:
        for number in (1, 2):
            _copy(nih_images[number - 1], roco / record[f"im_{number}"])
            record[f"im_{number}_local"] = ""
            record[f"category_{number}"] = str(record[f"category_{number}"])
    source = tmp_path / "mediconfusion" / "dataset.csv"
    source.parent.mkdir(parents=True)
    with source.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["", "id", *records[0]])
        writer.writeheader()
        for index, record in enumerate(records):
            writer.writerow({"": index, "id": 10001 + index, **record})
    questions, _ = _load("mediconfusion", source, tmp_path, root=roco)
    assert len(questions) == 6 and questions[0].category == "Chest, Cardiac"
    assert questions[3].images == [(roco / records[1]["im_2"]).resolve()] and questions[3].answer == "A"


def test_chestagentbench_parses_the_options_out_of_the_question_text(tmp_path: Path,
                                                                    nih_images: list[Path]) -> None:
    source = _built("chestagentbench", tmp_path, nih_images)
    questions, _ = _load("chestagentbench", source.parent, tmp_path)
    first, second, third = questions
    assert first.question == ("Based on Figure 1 and Figure 2, what is the most likely explanation of the cardiac "
                              "contour?")
    assert list(first.options) == list("ABCDEF") and first.options["F"] == "Mediastinal mass"
    assert (first.answer, first.chance) == ("A", 1 / 6)
    assert first.images == [(source.parent / "figures" / "11583" / name).resolve()
                            for name in ("figure_1.jpg", "figure_2.jpg")]
    assert second.options == {"A": "Left lower lobe", "B": "Right upper lobe", "C": "Neither"}
    assert second.answer == "C"  # "C) Neither"
    assert third.question == "Which finding does Figure 1 show?"
    assert third.options == {"A": "Normal study", "B": "Cardiomegaly", "C": "Effusion", "D": "Nodule"}
    assert [q.case_id for q in questions] == ["11583", "11583", "12001"]  # a case's questions can share memory
    assert first.question_id == "11583_11583_1" and first.category == "detection,classification,relationship,reasoning"
    assert first.question_type == "multiple choice"


@pytest.mark.parametrize("text", [
    "Which lobe?\nA) Left\nB) Right\nwith an effusion\nC) Both",
    "Which lobe? (A) Left (B) Right with an effusion (C) Both",
    "Which lobe?\nA. Left\nB. Right with an effusion\nC: Both",
])
def test_chestagentbench_option_forms(text: str) -> None:
    stem, options = chestagentbench.split_options(text)
    assert stem == "Which lobe?"
    assert options == {"A": "Left", "B": "Right with an effusion", "C": "Both"}


def test_medxpertqa_mm_reads_the_options_object_and_the_images_folder(tmp_path: Path,
                                                                      nih_images: list[Path]) -> None:
    source = _built("medxpertqa_mm", tmp_path, nih_images)
    top = source.parent.parent
    for given in (source, source.parent, top):  # the file, the MM folder or the dataset's top folder
        questions, _ = _load("medxpertqa_mm", given, tmp_path)
        assert [q.question_id for q in questions] == ["MM-0", "MM-1", "MM-2"]
    first = questions[0]
    assert first.question == "A 57-year-old man has dyspnea. What does the radiograph show?"
    assert list(first.options) == list("ABCDE") and (first.answer, questions[1].answer) == ("A", "E")
    assert first.images == [(top / "images" / name).resolve() for name in ("MM-0-a.png", "MM-0-b.png")]
    assert (first.category, first.body_part, first.question_type) == ("Diagnosis", "Cardiovascular", "Reasoning")


def test_medxpertqa_mm_reads_the_evaluation_repositorys_converted_form(tmp_path: Path,
                                                                      nih_images: list[Path]) -> None:
    records = medxpertqa_records()
    for record in records:
        record["options"] = [{"letter": letter, "content": text} for letter, text in record["options"].items()]
        record["label"] = [record["label"]]
        record["images"] = [{"image_path": name} for name in record["images"]]
    source = _built("medxpertqa_mm", tmp_path, nih_images, records)
    questions, _ = _load("medxpertqa_mm", source, tmp_path)
    assert [(q.answer, len(q.options), len(q.images)) for q in questions] == [("A", 5, 2), ("E", 5, 1), ("A", 5, 1)]


def test_omnimedvqa_maps_the_gold_text_to_its_letter_and_reads_every_file(tmp_path: Path,
                                                                         nih_images: list[Path]) -> None:
    source = _built("omnimedvqa", tmp_path, nih_images)
    top = source.parent.parent.parent
    single, _ = _load("omnimedvqa", source, tmp_path)
    assert [q.answer for q in single] == ["B", "C", "A"]  # "Cardiomegaly." is option B's "cardiomegaly"
    assert single[0].options == {"A": "Pneumonia", "B": "cardiomegaly", "C": "Normal"}
    assert single[0].images == [(top / "Images" / "NIH" / "00000001_000.png").resolve()]
    assert {(q.source, q.modality, q.question_type) for q in single[:1]} == {
        ("Chest X-Ray PA", "X-Ray", "Disease Diagnosis")}
    for folder in (top, source.parent):  # the top folder or the Open-access folder: every file, in name order
        everything, _ = _load("omnimedvqa", folder, tmp_path)
        assert [q.source for q in everything] == ["Chest CT Scan"] + ["Chest X-Ray PA"] * 3
        assert everything[0].modality == "CT"


# -- malformed rows: located, never quoting the cell, skipped and counted on request ------------------------------


def _escape(dataset: Path) -> str:
    """A path that leads from the dataset's folder to an existing file beside it."""
    (dataset.parent / f"{SECRET}.png").write_bytes(b"not part of the dataset")
    return f"../{SECRET}.png"


Mutation = Callable[[Record, Path], object]
MALFORMED: dict[str, dict[str, tuple[Mutation, str]]] = {
    "probmed": {
        "missing field": (lambda r, t: r.pop("question"), "question"),
        "gold not an option": (lambda r, t: r.update(answer=SECRET), "answer"),
        "missing image": (lambda r, t: r.update(image=f"probmed/{SECRET}.png"), "image"),
        "image escaping the dataset": (lambda r, t: r.update(image=_escape(t)), "image"),
        "unparseable options": (lambda r, t: r.update(qa_type=f"{SECRET} gt!"), "qa_type"),
    },
    "mediconfusion": {
        "missing field": (lambda r, t: r.pop("option_B"), "option_B"),
        "gold not an option": (lambda r, t: r.update(im_2_correct=SECRET), "im_2_correct"),
        "missing image": (lambda r, t: r.update(im_1_local=99999, im_1=f"{SECRET}.jpg"), "im_1"),
        "image escaping the dataset": (lambda r, t: r.update(im_1_local="", im_1=_escape(t)), "im_1"),
        "unparseable options": (lambda r, t: r.update(option_A={SECRET: 1}), "option_A"),
    },
    "chestagentbench": {
        "missing field": (lambda r, t: r.pop("question"), "question"),
        "gold not an option": (lambda r, t: r.update(answer=f"E) {SECRET}"), "answer"),
        "missing image": (lambda r, t: r.update(images=[f"figures/11583/{SECRET}.jpg"]), "images"),
        "image escaping the dataset": (lambda r, t: r.update(images=[_escape(t)]), "images"),
        "unparseable options": (lambda r, t: r.update(question=f"{SECRET}: which lobe is involved?"), "question"),
    },
    "medxpertqa_mm": {
        "missing field": (lambda r, t: r.pop("label"), "label"),
        "gold not an option": (lambda r, t: r.update(label=SECRET), "label"),
        "missing image": (lambda r, t: r.update(images=[f"{SECRET}.png"]), "images"),
        "image escaping the dataset": (lambda r, t: r.update(images=[_escape(t)]), "images"),
        "unparseable options": (lambda r, t: r.update(options={"A": SECRET, "C": "Normal"}), "options"),
    },
    "omnimedvqa": {
        "missing field": (lambda r, t: r.pop("question"), "question"),
        "gold not an option": (lambda r, t: r.update(gt_answer=SECRET), "gt_answer"),
        "missing image": (lambda r, t: r.update(image_path=f"Images/NIH/{SECRET}.png"), "image_path"),
        "image escaping the dataset": (lambda r, t: r.update(image_path=_escape(t)), "image_path"),
        "unparseable options": (lambda r, t: r.update(option_B=None, option_D=SECRET), "option_B"),  # A, C, D
    },
}
CASES = [(name, case) for name, cases in MALFORMED.items() for case in cases]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{name}-{case}" for name, case in CASES])
def test_a_malformed_row_is_located_without_quoting_it_and_can_be_skipped(name: str, case: str, tmp_path: Path,
                                                                          nih_images: list[Path]) -> None:
    mutate, field = MALFORMED[name][case]
    records = LAYOUTS[name].records()
    good = copy.deepcopy(records)
    mutate(records[1], tmp_path / name)
    source = _built(name, tmp_path, nih_images, records)
    expected_ids = [q.question_id for q in _load(name, _built(name, tmp_path / "good", nih_images, good),
                                                 tmp_path)[0]]

    with pytest.raises(QuestionFileError) as raised:
        _load(name, source, tmp_path)
    error = raised.value
    assert (error.file, error.row, error.line, error.field) == (source.name, 2, LAYOUTS[name].line_of_row_2, field)
    assert str(error).startswith(f"{source.name}:") and f"row 2: {field}: " in str(error)
    assert SECRET not in str(error) and str(tmp_path) not in str(error)

    questions, reader = _load(name, source, tmp_path, skip=True)
    [skipped] = reader.skipped
    assert (skipped.file, skipped.row, skipped.line, skipped.field) == (source.name, 2, LAYOUTS[name].line_of_row_2,
                                                                        field)
    assert SECRET not in skipped.problem
    per_row = 2 if name == "mediconfusion" else 1  # a MediConfusion row is a pair of questions, refused whole
    assert [q.question_id for q in questions] == expected_ids[:per_row] + expected_ids[2 * per_row:]


def test_an_unreadable_question_file_is_a_whole_file_error_even_when_skipping(tmp_path: Path) -> None:
    source = tmp_path / "test.json"
    source.write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(QuestionFileError) as raised:
        _load("probmed", source, tmp_path, skip=True)
    assert (raised.value.file, raised.value.field) == ("test.json", "(file)")


# -- detection -----------------------------------------------------------------------------------------------------


def test_each_layout_detects_its_own_files_and_no_other_layouts(tmp_path: Path, nih_images: list[Path]) -> None:
    sources = {name: _built(name, tmp_path, nih_images) for name in LAYOUTS}
    folders = {name: tmp_path / name for name in LAYOUTS}
    for name, layout in LAYOUTS.items():
        for other in LAYOUTS:
            assert layout.module.detect(sources[other]) is (other == name), (name, other)
            assert layout.module.detect(folders[other]) is (other == name), (name, "folder", other)
    assert not any(layout.module.detect(tmp_path / "missing.json") for layout in LAYOUTS.values())


def test_the_dispatch_detects_and_loads_each_layout_from_its_file_or_folder(tmp_path: Path,
                                                                           nih_images: list[Path]) -> None:
    for name in LAYOUTS:
        source = _built(name, tmp_path, nih_images)
        for given in (source, tmp_path / name):
            assert detect_layout(given) == name
            loaded = load_questions(given, image_cache=tmp_path / "cache", deidentifier=Deidentifier(b"x" * 32))
            assert (loaded.layout, loaded.skipped) == (name, [])
            assert loaded.questions and all(image.is_file() for q in loaded.questions for image in q.images)
