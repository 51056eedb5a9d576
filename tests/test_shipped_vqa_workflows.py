"""The shipped VQA workflows run as written (`medagent run workflows/X.yaml --dataset PATH`, the embedded planner
they default to) on tiny copies of each benchmark's public layout, built from the shared chest X-rays: every arm
answers every question, no row is lost to the loader, and `medagent report` shows the benchmark's own figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from medagent.store import StudyStore
from tests.conftest import REPO_ROOT
from tests.test_shipped_workflows import FINISHED, _medagent

WORKFLOWS = REPO_ROOT / "workflows"


def _run_as_written(workflow: str, dataset: Path, home: Path, *options: str) -> tuple[str, list[Any], int]:
    """(run id, its cases, skipped malformed rows) of `medagent run workflows/<workflow>.yaml --dataset <dataset>`."""
    done = _medagent(["run", str(WORKFLOWS / f"{workflow}.yaml"), "--dataset", str(dataset), *options], home)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    found = FINISHED.search(done.stdout)
    assert found is not None and "0 failed" in done.stdout, done.stdout
    with StudyStore.open(None, home) as store:
        cases = store.cases(found.group(1))
        skipped = sum(int(m.value or 0) for m in store.metrics(found.group(1)) if m.name == "dataset.skipped_rows")
    return found.group(1), cases, skipped


def _report(run_id: str, home: Path) -> str:
    out = home.parent / "report"
    done = _medagent(["report", run_id, "--out", str(out)], home)
    assert done.returncode == 0, done.stderr[-3000:]
    return (out / "report.md").read_text()


def _by_arm(cases: list[Any]) -> dict[str, set[str]]:
    arms: dict[str, set[str]] = {}
    for case in cases:
        arms.setdefault(case.columns["vqa.arm"], set()).add(case.columns["vqa.question_id"])
    return arms


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.slow
def test_the_vqa_rad_workflow_runs_as_written_on_the_hub_parquet(tmp_path: Path, nih_images: list[Path]) -> None:
    """VQA-RAD's hub split (one Parquet file, each image's bytes embedded): the bare arm answers alone, the experts
    arm after the quality gate and the classifier read the radiograph; closed and open questions scored apart."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first, second = (image.read_bytes() for image in nih_images[:2])
    rows = [{"image": {"bytes": first, "path": "synpic100.jpg"}, "question": "Is the heart enlarged?",
             "answer": "yes"},
            {"image": {"bytes": second, "path": "synpic200.jpg"}, "question": "What organ is shown?",
             "answer": "lungs and heart"}]
    source = tmp_path / "vqa-rad" / "test-00000-of-00001.parquet"
    source.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), source)
    home = tmp_path / "home"
    run_id, cases, skipped = _run_as_written("vqa-rad", source, home)
    questions = {f"{source.stem}-{row:05d}" for row in (1, 2)}
    assert _by_arm(cases) == {"bare": questions, "experts": questions} and skipped == 0
    assert {case.status for case in cases} == {"succeeded"}  # the open question's schema compiles on llama.cpp
    assert sorted(case.columns["vqa.kind"] for case in cases) == ["open", "open", "yes_no", "yes_no"]
    assert {(case.columns["vqa.constrained"], case.columns["vqa.parsed"]) for case in cases} == {(1, 1)}
    assert {case.columns["vqa.prediction"] for case in cases if case.columns["vqa.kind"] == "yes_no"} <= {"yes", "no"}
    with StudyStore.open(None, home) as store:
        for case in cases:
            tools = sorted(call.tool for call in store.tool_calls(run_id, case.case_id, 0) if call.ok)
            assert tools == ([] if case.columns["vqa.arm"] == "bare" else
                             ["assess_image_quality", "classify_chest_xray"]), case.case_id
    report = _report(run_id, home)
    assert "4 answered questions over 2 arm(s)" in report and "Malformed dataset rows skipped: 0." in report
    assert "### Closed vs open questions" in report and "### Per question kind" in report
    assert "## VQA open questions" in report and "## VQA arms compared with the baseline" in report


@pytest.mark.llama
@pytest.mark.lungs
@pytest.mark.torch
@pytest.mark.slow
def test_the_chestagentbench_workflow_runs_as_written_on_metadata_jsonl_and_figures(
        tmp_path: Path, nih_images: list[Path]) -> None:
    """ChestAgentBench's layout (metadata.jsonl, the options inside the question text, figures/<case>/figure_N.jpg):
    the agent loop answers each question with and without the experts, constrained to the six letters."""
    root = tmp_path / "chestagentbench"
    for case, image in (("11583", nih_images[0]), ("12001", nih_images[1])):
        (root / "figures" / case).mkdir(parents=True)
        with Image.open(image) as picture:  # the figures are JPEGs, as published
            picture.convert("L").save(root / "figures" / case / "figure_1.jpg", quality=90)
    options = "\nA) Cardiomegaly\nB) Pericardial effusion\nC) Normal heart size\nD) Pneumothorax\nE) Hiatal hernia\n" \
              "F) Mediastinal mass"
    records = [{"question": f"Based on Figure 1, what best explains the cardiac contour?{options}", "answer": "A",
                "case_id": "11583", "question_id": "11583_1", "full_question_id": "11583_11583_1",
                "images": ["figures/11583/figure_1.jpg"], "categories": "detection,classification,reasoning",
                "type": "multiple choice", "explanation": "the report", "sections": "history,image_finding",
                "image_source_urls": []},
               {"question": f"What does Figure 1 show?{options}", "answer": "C", "case_id": "12001",
                "question_id": "12001_1", "full_question_id": "12001_12001_1",
                "images": ["figures/12001/figure_1.jpg"], "categories": "classification,characterization",
                "type": "multiple choice", "explanation": "the report", "sections": "history",
                "image_source_urls": []}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    home = tmp_path / "home"
    # the first question only (each agent loop takes the small model several steps); the file is read whole
    run_id, cases, skipped = _run_as_written("chestagentbench", root / "metadata.jsonl", home, "--limit", "1")
    assert _by_arm(cases) == {"bare": {"11583_11583_1"}, "experts": {"11583_11583_1"}} and skipped == 0
    assert {case.status for case in cases} == {"succeeded"}
    assert {(case.columns["vqa.kind"], case.columns["vqa.mode"], case.columns["vqa.memory"]) for case in cases} \
        == {("choice", "agent", "fresh")}
    assert {(case.columns["vqa.constrained"], case.columns["vqa.parsed"]) for case in cases} == {(1, 1)}
    assert {case.columns["vqa.prediction"] for case in cases} <= set("ABCDEF")
    assert all(case.columns["vqa.chance"] == pytest.approx(1 / 6) for case in cases)
    with StudyStore.open(None, home) as store:
        assert not [call for case in cases if case.columns["vqa.arm"] == "bare"
                    for call in store.tool_calls(run_id, case.case_id, 0)]  # the bare arm is offered no expert
    report = _report(run_id, home)
    assert "2 answered questions over 2 arm(s); mode agent" in report and "each question ran in a fresh" in report
    assert "Malformed dataset rows skipped: 0." in report and "## VQA arms compared with the baseline" in report


@pytest.mark.llama
def test_the_probmed_workflow_runs_as_written_on_paired_yes_no_questions(tmp_path: Path,
                                                                         nih_images: list[Path]) -> None:
    """ProbMed's test.json (each ground-truth question with its hallucinated twin) and its image folder: every
    question answered yes or no, and the report's pair accuracy counts a pair only when both are right."""
    import shutil

    root = tmp_path / "ProbMed"
    (root / "chestx-ray14").mkdir(parents=True)
    for image in nih_images[:2]:
        shutil.copy(image, root / "chestx-ray14" / image.name)
    chest, normal = (f"chestx-ray14/{image.name}" for image in nih_images[:2])
    records = [
        {"id": 101, "i": 0, "image": chest, "image_type": "x-ray_chest", "qa_type": "modality_gt",
         "question": "<image>\nIs this a Chest X-Ray? (please answer yes/no)", "answer": "yes",
         "src_dataset": "ChestX-ray14"},
        {"id": 101, "i": 1, "image": chest, "image_type": "x-ray_chest", "qa_type": "modality_hallu",
         "question": "<image>\nIs this a CT Scan? (please answer yes/no)", "answer": "no", "src_dataset": "ChestX-ray14"},
        {"id": 102, "i": 2, "image": normal, "image_type": "x-ray_chest", "qa_type": "body_part_gt",
         "question": "<image>\nDoes this image show the chest? (please answer yes/no)", "answer": "yes",
         "src_dataset": "ChestX-ray14"},
        {"id": 102, "i": 3, "image": normal, "image_type": "x-ray_chest", "qa_type": "body_part_hallu",
         "question": "<image>\nDoes this image show the brain? (please answer yes/no)", "answer": "no",
         "src_dataset": "ChestX-ray14"}]
    (root / "test.json").write_text(json.dumps(records))
    home = tmp_path / "home"
    run_id, cases, skipped = _run_as_written("probmed", root / "test.json", home)
    assert _by_arm(cases) == {"default": {f"{r['id']}:{r['qa_type']}" for r in records}} and skipped == 0
    assert {case.status for case in cases} == {"succeeded"}
    assert {(case.columns["vqa.kind"], case.columns["vqa.parsed"]) for case in cases} == {("yes_no", 1)}
    assert {case.columns["vqa.prediction"] for case in cases} <= {"yes", "no"}
    roles = {case.columns["vqa.question_id"]: (case.columns["vqa.pair_id"], case.columns["vqa.pair_role"])
             for case in cases}
    assert roles["101:modality_hallu"] == ("101:modality", "adversarial")
    assert roles["102:body_part_gt"] == ("102:body_part", "ground_truth")
    report = _report(run_id, home)
    pairs = report.split("### ProbMed pair accuracy", 1)
    assert len(pairs) == 2 and "| default | 2 | 0 |" in pairs[1], report  # two complete pairs, none incomplete
    assert "4 answered questions over 1 arm(s); mode direct" in report
    assert "Malformed dataset rows skipped: 0." in report
