"""Dialogue benchmarks as studies: AgentClinic and built-in cases through the study runner, SQL
records, kill and resume, reports per temperament; scripted roles for exact checks (the shipped
dialogue workflow on the real embedded model runs in test_shipped_workflows.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.reports import build_report, render_markdown
from medagent.store import StudyStore
from medagent.studies import StudyConfigError, load_study
from medagent.studies.runner import run_study
from tests.conftest import SHARED_DATA, TEST_SECRET
from tests.study_files import recorded_cases

AGENTCLINIC = SHARED_DATA / "agentclinic" / "agentclinic_medqa.jsonl"
ROLE = "{backend: {_target_: medagent.simulators.scripted.scripted_role, kwargs: {role: %s%s}}}"


def _scripted_planners(doctor_extra: str = "", assessor_extra: str = "") -> str:
    return ("planners:\n"
            f"  planner: {ROLE % ('planner', doctor_extra)}\n"
            f"  patient: {ROLE % ('patient', '')}\n"
            f"  measurement: {ROLE % ('measurement', '')}\n"
            f"  assessor: {ROLE % ('assessor', assessor_extra)}\n")


def _study(folder: Path, *, dataset: str, planners: str, graph: str = "", concurrency: int = 4,
           experts: str = "", modality: str = "") -> Path:
    text = f"""name: dialogue-test
{planners}{experts}graph:
  type: dialogue
  max_turns: 4
{graph}dataset:
  type: cases
  path: {dataset}
{modality}seeds: 3
concurrency: {{cases: {concurrency}}}
"""
    path = folder / "study.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "home"))
    return Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv", allow_untrained_test_only=True)


def _first_cases(folder: Path, count: int) -> Path:
    lines = [line for line in AGENTCLINIC.read_text().splitlines() if line.strip()][:count]
    path = folder / "agentclinic-subset.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.asyncio
async def test_agentclinic_cases_run_as_a_study_with_transcripts_scores_and_a_report(
        tmp_path: Path, settings: Settings) -> None:
    cases = _first_cases(tmp_path, 8)
    config = load_study(_study(tmp_path, dataset=cases.name, planners=_scripted_planners()))
    with StudyStore.open(None, settings.home) as store:
        events = [event async for event in run_study(config, store=store, settings=settings, run_id="d1")]
        assert events[-1].kind == "finished" and events[-1].done == 8 and events[-1].failed == 0
        stored = store.cases("d1")
        assert len(stored) == 8 and {case.status for case in stored} == {"succeeded"}
        diagnoses = [json.loads(line)["OSCE_Examination"]["Correct_Diagnosis"]
                     for line in cases.read_text().splitlines()]
        for case in stored:
            columns = case.columns
            # cases without a temperament cycle through the four, in dataset order
            assert columns["subgroup.temperament"] in {"sanguine", "choleric", "melancholic", "phlegmatic"}
            assert columns["dialogue.stop_reason"] in {"diagnosis", "patient_stop", "turn_limit"}
            assert columns["dialogue.truth"] in diagnoses and columns["assessment.failed"] == 0
            assert columns["assessment.overall"] in {"unsatisfactory", "satisfactory", "excellent"}
            assert set(case.result["models"]) == {"doctor", "patient", "measurement"}  # type: ignore[index]
            transcript = store.messages("d1", case.case_id, 0)
            assert transcript[0]["role"] == "patient" and any(m["role"] == "doctor" for m in transcript)
            # the patient never says the diagnosis (the truth is an open label, the case's own)
            truth = str(columns["dialogue.truth"]).lower()
            assert all(truth not in str(m["content"]).lower() for m in transcript if m["role"] == "patient")
        temperaments = {case.columns["subgroup.temperament"] for case in stored}
        assert len(temperaments) == 4
        report = build_report(store.cases_frame("d1"), store.tool_calls_frame("d1"), run_id="d1")
    assert report.dialogue is not None and report.dialogue.overall.n_observations == 8
    markdown = render_markdown(report)
    assert "Diagnostic dialogues" in markdown and "### Per temperament" in markdown
    assert "weighted_f1" in markdown and "none_rate" in markdown


@pytest.mark.asyncio
async def test_variants_hints_and_assessor_failures_are_recorded(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    case_file = tmp_path / "cases.yaml"
    case_file.write_text(f"""label_set: medagent-builtin
cases:
  - case_id: cxr-1
    patient: {{primary_symptom: "I have been short of breath for a week.", history: "Ankles swollen."}}
    examiner: {{physical_examination: {{Heart: "Displaced apex beat"}}}}
    images: [{nih_images[0]}]
    diagnosis: pleural effusion
    subgroups: {{sex: female}}
""")
    graph = ("  strategy: dialogue_with_experts\n  top_k: 2\n  label_set: medagent-builtin\n"
             "  temperaments: [sanguine, choleric]\n  biases: [none, recency]\n")
    study = _study(tmp_path, dataset=case_file.name, graph=graph, experts="experts: [classify_chest_xray]\n",
                   modality="  modality: DX\n", planners=_scripted_planners(assessor_extra=", malformed: 100"))
    config = load_study(study)
    with StudyStore.open(None, settings.home) as store:
        events = [event async for event in run_study(config, store=store, settings=settings, run_id="d2")]
        assert events[-1].done == 4
        stored = {case.case_id: case for case in store.cases("d2")}
        assert set(stored) == {f"cxr-1:{t}:{b}" for t in ("sanguine", "choleric") for b in ("none", "recency")}
        for key, case in stored.items():
            temperament, bias = key.split(":")[1:]
            assert case.columns["subgroup.temperament"] == temperament and case.columns["subgroup.bias"] == bias
            assert case.columns["subgroup.sex"] == "female"
            hints = case.result["hints"]  # type: ignore[index]
            assert len(hints) == 2 and hints[0]["probability"] >= hints[1]["probability"]
            calls = store.tool_calls("d2", key, 0)
            assert [call.tool for call in calls] == ["classify_chest_xray"] and calls[0].ok
            assert {hint["label"] for hint in hints} <= {f["label"] for f in calls[0].output["findings"]}
            # an assessor that never returns a rubric: a typed failure on the case; the dialogue still counts
            assert case.status == "succeeded" and case.columns["assessment.failed"] == 1
            assert case.result["assessment_error"]["code"] == "assessment_failed"  # type: ignore[index]
        report = build_report(store.cases_frame("d2"), store.tool_calls_frame("d2"), run_id="d2")
    assert report.assessor_failures == 4
    assert [table.group for table in report.dialogue.groups][:2] == ["temperament", "bias"]  # type: ignore[union-attr]


def test_dialogue_studies_are_validated(tmp_path: Path) -> None:
    planners = _scripted_planners()
    with pytest.raises(StudyConfigError, match=r"graph\.biases.*unknown bias 'stubborn'"):
        load_study(_study(tmp_path, dataset="builtin", planners=planners, graph="  biases: [stubborn]\n"))
    manifest = _study(tmp_path, dataset="builtin", planners=planners).read_text().replace("type: cases",
                                                                                          "type: manifest")
    (tmp_path / "manifest.yaml").write_text(manifest)
    with pytest.raises(StudyConfigError, match=r"dataset\.type.*needs a 'cases' dataset"):
        load_study(tmp_path / "manifest.yaml")
    with pytest.raises(StudyConfigError, match=r"graph\.strategy"):
        load_study(_study(tmp_path, dataset="builtin", planners=planners, graph="  strategy: interview\n"))
    builtin = load_study(_study(tmp_path, dataset="builtin", planners=planners))
    assert len(builtin.cases()) >= 5 and all(case.dialogue is not None for case in builtin.cases())
    # label_set auto: the set the cases name (a closed one for the built-in cases), else each case's own
    from medagent.studies.dialogue_runner import resolve_label_set

    dialogues = [case.dialogue for case in builtin.cases() if case.dialogue is not None]
    chosen = resolve_label_set(builtin.graph, dialogues, [tmp_path])  # type: ignore[arg-type]
    assert chosen.name == "medagent-builtin" and chosen.closed
    agentclinic = load_study(_study(tmp_path, dataset=str(AGENTCLINIC), planners=planners))
    dialogues = [case.dialogue for case in agentclinic.cases()[:5] if case.dialogue is not None]
    chosen = resolve_label_set(agentclinic.graph, dialogues, [tmp_path])  # type: ignore[arg-type]
    assert not chosen.closed and {case.diagnosis for case in dialogues} <= set(chosen.names)
    shipped = load_study(Path(__file__).resolve().parents[1] / "workflows" / "dialogue-bench.yaml")
    assert shipped.graph.type == "dialogue" and set(shipped.planners) == {"planner", "patient", "measurement",
                                                                         "assessor"}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_twenty_agentclinic_dialogues_resume_after_a_kill_and_report_per_temperament(tmp_path: Path) -> None:
    cases = _first_cases(tmp_path, 20)
    study = _study(tmp_path, dataset=cases.name, planners=_scripted_planners(doctor_extra=", latency_s: 0.05"),
                   concurrency=2)
    environment = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode()}
    command = [sys.executable, "-m", "medagent.cli"]
    process = subprocess.Popen([*command, "run", str(study), "--run-id", "bench"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and recorded_cases(tmp_path / "home", "bench") < 6:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with StudyStore.open(None, tmp_path / "home") as store:
        before = {case.case_id: case.recorded_at for case in store.cases("bench")}
    assert 0 < len(before) < 20, "the kill should land mid-run"
    finish = subprocess.run([*command, "run", str(study), "--resume", "bench"], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]
    with StudyStore.open(None, tmp_path / "home") as store:
        stored = store.cases("bench")
        keys = [(case.case_id, case.repeat) for case in stored]
        assert len(keys) == len(set(keys)) == 20 and all(case.attempts == 1 for case in stored)
        for case in stored:
            if case.case_id in before:  # finished before the kill: not run again
                assert case.recorded_at == before[case.case_id]
    report = subprocess.run([*command, "report", "bench"], env=environment, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    markdown = (tmp_path / "home" / "reports" / "bench" / "report.md").read_text()
    table = markdown.split("### Per temperament", 1)[1].split("###", 1)[0]
    for temperament in ("sanguine", "choleric", "melancholic", "phlegmatic"):
        assert f"| {temperament} (small) | 5 |" in table  # 20 cases cycle through the four
