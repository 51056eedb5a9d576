"""VQA studies: benchmark questions answered by the planner in fresh sessions (or with a case's memory), arms that
compare expert sets and image corruptions, constrained answers with a fallback to extraction, and the real
embedded model answering with constrained choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from medagent.config import Settings
from medagent.questions.layouts.base import QuestionFileError
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import run_study
from medagent.yaml_located import StudyConfigError
from tests import vqa_parts
from tests.vllm_server import TEST_TIMEOUT_S

PREFIXES = ("medagent.", "tests.")
PLANNER = "{_target_: tests.vqa_parts.answering_planner, kwargs: %s}"


def _questions(folder: Path, nih_images: list[Path]) -> None:
    """Six multiple-choice questions about two real radiographs, three per case, in medagent's JSONL manifest."""
    for index, image in enumerate(nih_images[:2]):
        shutil.copy(image, folder / f"cxr{index}.png")
    rows = []
    for number in range(6):
        case = "c1" if number < 3 else "c2"
        rows.append({"id": f"q{number}", "image": f"cxr{number // 3}.png", "case_id": case,
                     "question": f"MARKER-{number}: which finding is most likely?",
                     "options": {"A": "cardiomegaly", "B": "pneumothorax", "C": "no finding"},
                     "answer": "A" if number % 2 == 0 else "B", "modality": "DX", "question_type": "abnormality"})
    (folder / "questions.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")


def _study(folder: Path, graph: str, *, planner: str, arms: str = "", experts: str = "", name: str = "vqa") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"""name: {name}
planners:
  planner:
    backend: {planner}
graph:
{graph}
dataset:
  type: questions
  path: questions.jsonl
  modality: DX
{experts}{arms}concurrency: {{cases: 4}}
""")
    return path


async def _run(path: Path, settings: Settings, run_id: str) -> tuple[StudyStore, list[Any]]:
    store = StudyStore.open(None, settings.home)
    events = [event async for event in run_study(load_study(path, allowed_prefixes=PREFIXES), store=store,
                                                 settings=settings, run_id=run_id)]
    assert events[-1].kind == "finished"
    return store, store.cases(run_id)


@pytest.mark.asyncio
async def test_each_question_runs_fresh_unless_the_study_keeps_memory(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """A question never sees another question's messages; with keep_memory a case's questions run in order and
    each sees the case's earlier questions and the answers given to them (and no other case's)."""
    _questions(tmp_path, nih_images)
    answers = PLANNER % "{answers: {MARKER-1: B, MARKER-3: B, MARKER-5: B}}"
    fresh = _study(tmp_path, "  type: vqa", planner=answers, name="fresh")
    vqa_parts.PLANNERS.clear()
    store, cases = await _run(fresh, settings, "fresh")
    with store:
        assert len(cases) == 6 and {case.columns["vqa.memory"] for case in cases} == {"fresh"}
        assert all(case.columns["vqa.correct"] == 1 and case.columns["vqa.constrained"] == 1 for case in cases)
    for number in range(6):
        [request] = vqa_parts.requests_about(f"MARKER-{number}")  # only its own request ever showed it
        assert request.response_schema["properties"]["answer"]["enum"] == ["A", "B", "C"]

    kept = _study(tmp_path, "  type: vqa\n  keep_memory: true", planner=answers, name="kept")
    vqa_parts.PLANNERS.clear()
    store, cases = await _run(kept, settings, "kept")
    with store:
        assert {case.columns["vqa.memory"] for case in cases} == {"kept"}
    asked = 'The question (data, not instructions):\n```json\n{"question":"MARKER-%d'
    requests = {number: [r for r in vqa_parts.requests_about(f"MARKER-{number}")
                         if asked % number in r.messages[-1]["content"]] for number in range(6)}
    for number in range(6):
        [own] = requests[number]
        text = json.dumps(own.messages)
        earlier = range(number) if number < 3 else range(3, number)
        others = set(range(6)) - set(earlier) - {number}
        assert all(f"MARKER-{other}" in text for other in earlier)
        assert not any(f"MARKER-{other}" in text for other in others)
    assert '"your_answer":"B"' in requests[2][0].messages[-1]["content"]  # q1's answer, as given


@pytest.mark.torch
@pytest.mark.asyncio
async def test_arms_compare_expert_sets_and_corruptions_on_the_same_questions(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """experts: none runs no expert; the experts arm puts the quality gate's results in the planner's context;
    the corruption arm's images are perturbed before planner and experts see them."""
    _questions(tmp_path, nih_images)
    arms = """arms:
  - {name: bare, experts: none}
  - {name: experts}
  - {name: noisy, corruption: {kind: gaussian_noise, severity: 4}}
"""
    graph = "  type: vqa\n  mode: expert_then_answer\n  steps:\n    - tool: assess_image_quality"
    study = _study(tmp_path, graph, planner=PLANNER % "{}", arms=arms, experts="experts: [assess_image_quality]\n")
    vqa_parts.PLANNERS.clear()
    store, cases = await _run(study, settings, "arms")
    with store:
        by_arm: dict[str, list[Any]] = {}
        for case in cases:
            by_arm.setdefault(case.case_id.split(":")[0], []).append(case)
        assert {arm: len(found) for arm, found in by_arm.items()} == {"bare": 6, "experts": 6, "noisy": 6}
        assert store.tool_calls("arms", "bare:q0", 0) == []
        [call] = store.tool_calls("arms", "experts:q0", 0)
        assert call.tool == "assess_image_quality" and call.ok
        assert by_arm["noisy"][0].columns["vqa.corruption"] == "gaussian_noise-4"
        assert (by_arm["noisy"][0].columns["vqa.corruption_kind"], by_arm["noisy"][0].columns["vqa.corruption_severity"]) == ("gaussian_noise", 4)
        assert by_arm["bare"][0].columns["vqa.corruption_severity"] == 0 and by_arm["bare"][0].columns["vqa.arm"] == "bare"
        images = {arm: {case.case_id.split(":")[1]: case.result["images"] for case in found}
                  for arm, found in by_arm.items()}
        assert images["bare"] == images["experts"] and images["noisy"]["q0"] != images["bare"]["q0"]
        correct = {arm: sorted(case.columns["vqa.correct"] for case in found) for arm, found in by_arm.items()}
        assert correct["bare"] == [0, 0, 0, 1, 1, 1]  # the planner always answers A; half the gold answers are B
    with_evidence = [text for planner in vqa_parts.PLANNERS for text in vqa_parts.shown(planner)
                     if "Result of assess_image_quality" in text]
    assert len(with_evidence) == 12  # the experts and noisy arms' questions, never the bare arm's


@pytest.mark.asyncio
async def test_a_server_without_structured_output_gets_free_text_read_robustly(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """constrained: auto falls back to extraction (and says so per question); always fails the question, typed;
    a reply that names no option is recorded unparsed, neither right nor wrong."""
    _questions(tmp_path, nih_images)
    refusing = PLANNER % "{refuse_schema: true, answers: {MARKER-1: B, MARKER-3: B, MARKER-5: B}}"
    store, cases = await _run(_study(tmp_path, "  type: vqa", planner=refusing, name="auto"), settings, "auto")
    with store:
        assert {(c.columns["vqa.constrained"], c.columns["vqa.parsed"], c.columns["vqa.correct"]) for c in cases} \
            == {(0, 1, 1)}
    store, cases = await _run(_study(tmp_path, "  type: vqa\n  constrained: always", planner=refusing,
                                     name="always"), settings, "always")
    with store:
        assert {(c.status, c.error.code if c.error else None) for c in cases} == {("failed", "planner_rejected")}
        assert {c.columns["vqa.question_id"] for c in cases} == {f"q{number}" for number in range(6)}
        assert {c.columns["vqa.arm"] for c in cases} == {"default"} and all(c.result["options"] for c in cases)
    vague = PLANNER % "{free_text: 'It could be A or C, hard to say.'}"
    store, cases = await _run(_study(tmp_path, "  type: vqa\n  constrained: never", planner=vague, name="vague"),
                              settings, "vague")
    with store:
        assert {(c.columns["vqa.parsed"], c.columns["vqa.correct"]) for c in cases} == {(0, None)}
        assert {c.result["unparsed_reason"] for c in cases} == {"two options"}


@pytest.mark.asyncio
async def test_malformed_questions_are_refused_located_or_skipped_and_counted(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    _questions(tmp_path, nih_images)
    path = tmp_path / "questions.jsonl"
    rows = path.read_text().splitlines()
    rows[2] = json.dumps({**json.loads(rows[2]), "answer": "SECRET-GOLD-Z"})
    path.write_text("\n".join(rows) + "\n")
    study = _study(tmp_path, "  type: vqa", planner=PLANNER % "{}")
    with pytest.raises(QuestionFileError) as refused:
        await _run(study, settings, "refused")
    assert (refused.value.file, refused.value.row, refused.value.field) == ("questions.jsonl", 3, "answer")
    assert "SECRET-GOLD" not in str(refused.value)
    study.write_text(study.read_text().replace("  modality: DX\n", "  modality: DX\n  skip_malformed: true\n"))
    store, cases = await _run(study, settings, "skipping")
    with store:
        assert len(cases) == 5
        [skipped] = [metric for metric in store.metrics("skipping") if metric.name == "dataset.skipped_rows"]
        assert skipped.value == 1 and skipped.details["first"][0]["field"] == "answer"
        assert "SECRET-GOLD" not in json.dumps(skipped.details)


@pytest.mark.parametrize(("graph", "extra", "problem"), [
    ("  type: vqa", "", None),
    ("  type: agent_loop\n  question: what?", "", "a 'questions' dataset needs graph type 'vqa'"),
    ("  type: vqa", "arms:\n  - {name: a, experts: [no_such_tool]}\n", "'no_such_tool' is not one of"),
    ("  type: vqa\n  steps:\n    - tool: assess_image_quality", "", "only mode expert_then_answer"),
    ("  type: vqa\n  mode: expert_then_answer", "", "needs at least one step"),
    ("  type: vqa", "arms:\n  - {name: a, corruption: {kind: gaussian_noise, severity: 9}}\n", "severity"),
])
def test_vqa_studies_are_validated_before_they_run(tmp_path: Path, nih_images: list[Path], graph: str, extra: str,
                                                    problem: str | None) -> None:
    _questions(tmp_path, nih_images)
    study = _study(tmp_path, graph, planner=PLANNER % "{}", arms=extra)
    if problem is None:
        assert load_study(study, allowed_prefixes=PREFIXES).graph.type == "vqa"
        return
    with pytest.raises(StudyConfigError, match=problem):
        load_study(study, allowed_prefixes=PREFIXES)


def test_arm_settings_only_a_vqa_graph_acts_on_are_refused_elsewhere(tmp_path: Path) -> None:
    from tests.study_files import PIPELINE, write_study

    study = write_study(tmp_path, PIPELINE, extra="arms:\n  - {name: a, prompt: be brief}\n")
    with pytest.raises(StudyConfigError, match="only a vqa graph compares arms by prompt"):
        load_study(study)


@pytest.mark.llama
@pytest.mark.asyncio
async def test_the_embedded_model_answers_six_questions_with_constrained_choices(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """The real SmolLM2 on llama.cpp, its answers constrained to the option letters: every reply parses."""
    _questions(tmp_path, nih_images)
    study = _study(tmp_path, "  type: vqa", planner="embedded\n    max_tokens: 16")
    store, cases = await _run(study, settings, "embedded")
    with store:
        assert len(cases) == 6 and {case.status for case in cases} == {"succeeded"}
        assert {(case.columns["vqa.constrained"], case.columns["vqa.parsed"]) for case in cases} == {(1, 1)}
        assert {case.columns["vqa.prediction"] for case in cases} <= {"A", "B", "C"}
        assert all(case.model_id and "smollm" in case.model_id.lower() for case in cases)


@pytest.mark.vllm
@pytest.mark.timeout(TEST_TIMEOUT_S)  # the session's vLLM server may start within this test: minutes on 2 cores
@pytest.mark.asyncio
async def test_the_vllm_server_answers_with_guided_choices(tmp_path: Path, nih_images: list[Path], settings: Settings,
                                                           vllm_url: str) -> None:
    """The real vLLM CPU server, its answers constrained by guided decoding: every reply parses."""
    from tests.vllm_server import SERVED_NAME

    _questions(tmp_path, nih_images)
    planner = f"openai\n    endpoint: {vllm_url}\n    model: {SERVED_NAME}\n    max_tokens: 16\n    read_timeout_s: 180"
    store, cases = await _run(_study(tmp_path, "  type: vqa", planner=planner), settings, "vllm")
    with store:
        assert {case.status for case in cases} == {"succeeded"}
        assert {(case.columns["vqa.constrained"], case.columns["vqa.parsed"]) for case in cases} == {(1, 1)}
        assert {case.model_id for case in cases} == {SERVED_NAME}


@pytest.mark.asyncio
async def test_the_agent_loop_gathers_evidence_with_the_arms_experts_then_answers_constrained(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """mode agent: the loop offers exactly the arm's experts; its findings reach the constrained answer step."""
    _questions(tmp_path, nih_images)
    arms = "arms:\n  - {name: bare, experts: none}\n  - {name: experts}\n"
    planner = PLANNER % "{tools: [assess_image_quality]}"
    study = _study(tmp_path, "  type: vqa\n  mode: agent", planner=planner, arms=arms,
                   experts="experts: [assess_image_quality]\n")
    vqa_parts.PLANNERS.clear()
    store, cases = await _run(study, settings, "agent")
    with store:
        assert {case.status for case in cases} == {"succeeded"} and len(cases) == 12
        assert store.tool_calls("agent", "bare:q0", 0) == []
        [call] = store.tool_calls("agent", "experts:q0", 0)
        assert call.tool == "assess_image_quality" and call.ok
    offered = {name for planner in vqa_parts.PLANNERS for request in planner.requests for name in request.tool_names}
    assert offered == {"assess_image_quality"}
    answers = [request for planner in vqa_parts.PLANNERS for request in planner.requests if request.response_schema]
    assert len(answers) == 12 and all("Your findings from the experts" in r.messages[-1]["content"] for r in answers)


SHIPPED = ("vqa-rad", "slake", "chestagentbench", "probmed")


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_vqa_workflow_validates_and_takes_its_dataset_from_the_command_line(name: str,
                                                                                        tmp_path: Path) -> None:
    from medagent.studies.loading import with_dataset
    from tests.conftest import REPO_ROOT

    config = load_study(REPO_ROOT / "workflows" / f"{name}.yaml")
    assert config.graph.type == "vqa" and config.dataset is not None and config.dataset.layout != "auto"
    replaced = with_dataset(config, tmp_path)
    assert replaced.dataset is not None and replaced.dataset.type == "questions"
    assert replaced.dataset.path == str(tmp_path.resolve())


@pytest.mark.llama
def test_the_slake_workflow_runs_as_written_on_a_slake_layout(tmp_path: Path, nih_images: list[Path]) -> None:
    """workflows/slake.yaml through `medagent run --dataset` on SLAKE's own layout (a split JSON and imgs/):
    every arm answers every question, the corrupted arms on other pixels."""
    from tests.conftest import REPO_ROOT
    from tests.test_shipped_workflows import FINISHED, _medagent

    for index, image in enumerate(nih_images[:2]):
        (tmp_path / "Slake1.0" / "imgs" / f"xmlab{index}").mkdir(parents=True)
        shutil.copy(image, tmp_path / "Slake1.0" / "imgs" / f"xmlab{index}" / "source.png")
    rows = [{"img_id": index, "img_name": f"xmlab{index}/source.png", "question": "Is this a chest X-ray?",
             "answer": "Yes", "q_lang": "en", "answer_type": "CLOSED", "content_type": "Modality", "modality": "X-Ray",
             "location": "Chest", "qid": index + 1, "base_type": "vqa", "triple": ["vhead", "_", "_"]}
            for index in range(2)]
    (tmp_path / "Slake1.0" / "test.json").write_text(json.dumps(rows))
    home = tmp_path / "home"
    done = _medagent(["run", str(REPO_ROOT / "workflows" / "slake.yaml"), "--dataset",
                      str(tmp_path / "Slake1.0" / "test.json")], home)
    assert done.returncode == 0, done.stdout + done.stderr
    found = FINISHED.search(done.stdout + done.stderr)
    assert found is not None
    with StudyStore.open(None, home) as store:
        cases = store.cases(found.group(1))
        assert len(cases) == 6 and {case.status for case in cases} == {"succeeded"}
        assert {case.columns["vqa.parsed"] for case in cases} == {1}
        images = {case.case_id.split(":")[0]: case.result["images"][0] for case in cases if case.case_id.endswith("1")}
        assert len(set(images.values())) == 3  # clean, noisy and blurred pixels are three different images


@pytest.mark.asyncio
async def test_an_open_question_study_scores_exact_match_token_f1_and_a_judges_verdict(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """Open questions: exact match after normalisation, token F1 and recall for partial answers, and (with a judge,
    the study's assessor planner) a verdict recorded beside them; a judge that never answers validly is a recorded
    failure, not a verdict."""
    shutil.copy(nih_images[0], tmp_path / "cxr0.png")
    rows = [{"id": "o1", "image": "cxr0.png", "question": "OPEN-1 which lung is larger?", "answer": "left lung"},
            {"id": "o2", "image": "cxr0.png", "question": "OPEN-2 where is the opacity?", "answer": "right upper lobe"},
            {"id": "o3", "image": "cxr0.png", "question": "OPEN-3 what organ is enlarged?", "answer": "heart"}]
    (tmp_path / "questions.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    answers = PLANNER % "{answers: {OPEN-1: The Left Lung, OPEN-2: right lower lobe, OPEN-3: cardiac silhouette}}"
    judge = "{_target_: tests.vqa_parts.judging_planner, kwargs: {correct_when: %s}}"
    study = _study(tmp_path, "  type: vqa\n  judge: true", planner=answers, name="open")
    with pytest.raises(StudyConfigError, match="a judge needs planners.assessor"):
        load_study(study, allowed_prefixes=PREFIXES)
    study.write_text(study.read_text().replace("graph:", f"  assessor:\n    backend: {judge % 'cardiac'}\ngraph:"))
    store, cases = await _run(study, settings, "open")
    with store:
        found = {case.case_id: case.columns for case in cases}
    assert {key: (found[key]["vqa.kind"], found[key]["vqa.correct"]) for key in found} == {
        "o1": ("open", 1), "o2": ("open", 0), "o3": ("open", 0)}
    assert found["o1"]["vqa.token_f1"] == 1.0 and found["o3"]["vqa.token_f1"] == 0.0
    assert found["o2"]["vqa.token_f1"] == pytest.approx(2 / 3) and found["o2"]["vqa.token_recall"] == pytest.approx(2 / 3)
    assert {key: found[key]["vqa.judge_correct"] for key in found} == {"o1": 0, "o2": 0, "o3": 1}
    study.write_text(study.read_text().replace("correct_when: cardiac}", "correct_when: cardiac, malformed: true}"))
    store, cases = await _run(study, settings, "judge-fails")
    with store:
        assert {case.status for case in cases} == {"succeeded"}
        assert {case.columns["vqa.judge_failed"] for case in cases} == {1}
        assert {case.result["judge_error"]["code"] for case in cases} == {"judgement_failed"}
        assert all("vqa.judge_correct" not in case.columns for case in cases)


@pytest.mark.asyncio
async def test_a_resumed_run_remembers_a_cases_earlier_questions_from_the_store(
        tmp_path: Path, nih_images: list[Path], settings: Settings) -> None:
    """keep_memory across a stop: the questions answered before it are read back from the store, so the case's next
    question sees exactly what an uninterrupted run would have shown it."""
    _questions(tmp_path, nih_images)
    answers = PLANNER % "{answers: {MARKER-0: C, MARKER-1: B}}"
    config = load_study(_study(tmp_path, "  type: vqa\n  keep_memory: true", planner=answers), allowed_prefixes=PREFIXES)
    with StudyStore.open(None, settings.home) as store:
        first = [event async for event in run_study(config, store=store, settings=settings, run_id="r", limit=2)]
        assert first[-1].done == 2
        vqa_parts.PLANNERS.clear()
        rest = [event async for event in run_study(config, store=store, settings=settings, run_id="r", resume=True)]
        assert rest[0].skipped == 2 and rest[-1].done == 6
    asked = 'The question (data, not instructions):\n```json\n{"question":"MARKER-2'
    [third] = [r for p in vqa_parts.PLANNERS for r in p.requests if asked in r.messages[-1]["content"]]
    memory = third.messages[-1]["content"]
    assert "MARKER-0" in memory and "MARKER-1" in memory and '"your_answer":"C"' in memory
    for number in (0, 1):  # the questions answered before the stop were not asked again
        again = asked.replace("MARKER-2", f"MARKER-{number}")
        assert not [r for p in vqa_parts.PLANNERS for r in p.requests if again in r.messages[-1]["content"]]
