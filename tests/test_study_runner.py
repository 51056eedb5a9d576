"""Studies end to end: manifests of real images, pipelines and agent loops, SQL records, resume, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import run_study
from tests.conftest import TEST_SECRET
from tests.study_files import PIPELINE, SCRIPTED, recorded_cases, variants, write_manifest, write_study

pytestmark = pytest.mark.asyncio

@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    return Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv", allow_untrained_test_only=True)


@pytest.mark.torch
async def test_a_pipeline_study_over_real_images_records_every_case(
        tmp_path: Path, settings: Settings, nih_images: list[Path], pydicom_ct: Path, nibabel_data: Path) -> None:
    rows = [("cxr-1", nih_images[0], 1, "M"), ("cxr-2", nih_images[1], 0, "F"), ("ct", pydicom_ct, "", "F"),
            ("nifti", nibabel_data / "anatomical.nii", "", "M")]
    write_manifest(tmp_path, rows)
    config = load_study(write_study(tmp_path, PIPELINE))
    with StudyStore.open(None, settings.home) as store:
        events = [event async for event in run_study(config, store=store, settings=settings, run_id="r1")]
        assert events[0].kind == "started" and events[-1].kind == "finished" and events[-1].done == 4
        cases = {case.case_id: case for case in store.cases("r1")}
        assert set(cases) == {"cxr-1", "cxr-2", "ct", "nifti"}
        for name in ("cxr-1", "cxr-2"):
            assert cases[name].status == "succeeded"
            assert 0.0 <= cases[name].columns["prob.Cardiomegaly"] <= 1.0  # type: ignore[operator]
            assert cases[name].expert_weights["cxr_classifier"] == "untrained"  # random test-only weights, said so
        assert cases["cxr-1"].columns["truth.Cardiomegaly"] == 1 and cases["cxr-1"].columns["subgroup.sex"] == "M"
        # the CT is a DICOM CT whatever the manifest declares: the chest X-ray classifier refuses it, typed
        assert cases["ct"].status == "failed" and cases["ct"].error.code == "precondition_failed"  # type: ignore[union-attr]
        calls = store.tool_calls("r1", "cxr-1", 0)
        assert [call.tool for call in calls] == ["assess_image_quality", "classify_chest_xray"]
        assert store.get_run("r1").status == "finished"  # type: ignore[union-attr]


@pytest.mark.torch
async def test_agent_loop_study_resumes_without_rerunning_finished_cases(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    write_manifest(tmp_path, [("a", nih_images[0], 1, "M"), ("b", nih_images[1], 0, "F")])
    graph = "  type: agent_loop\n  question: Is the heart enlarged?"
    config = load_study(write_study(tmp_path, graph, planner=SCRIPTED % ("classify_chest_xray", ""), repeats=2))
    with StudyStore.open(None, settings.home) as store:
        first = [e async for e in run_study(config, store=store, settings=settings, run_id="r2", limit=1)]
        assert first[-1].done == 2  # case a, two repeats
        recorded = {(c.case_id, c.repeat): c.recorded_at for c in store.cases("r2")}
        resumed = [e async for e in run_study(config, store=store, settings=settings, run_id="r2", resume=True)]
        assert resumed[0].skipped == 2 and resumed[-1].done == 4
        cases = store.cases("r2")
        assert sorted((c.case_id, c.repeat) for c in cases) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
        for case in cases:
            assert case.status == "succeeded" and case.model_id == "scripted:tool-sequence"
            assert case.seed == 7 + case.repeat and case.attempts == 1
            assert "classify_chest_xray" in (case.answer or "")
            if (case.case_id, case.repeat) in recorded:  # finished before the resume: not written again
                assert case.recorded_at == recorded[(case.case_id, case.repeat)]
        assert [m["role"] for m in store.messages("r2", "b", 1)][:2] == ["user", "assistant"]


CASES = 30  # three kills land mid-run, each with cases in flight (4 at a time)


@pytest.mark.slow
async def test_sigkill_at_several_points_then_resume_gives_one_record_per_case(
        tmp_path: Path, nih_images: list[Path], store_url: str | None) -> None:
    """On the default SQLite file and on a real PostgreSQL server (``--store``)."""
    images = variants(nih_images[0], tmp_path, CASES)
    write_manifest(tmp_path, [(f"case-{i:02d}", path, i % 2, "MF"[i % 2]) for i, path in enumerate(images)])
    log = tmp_path / "home" / "logs" / "planner-calls.log"  # call_log names a file under MEDAGENT_HOME/logs
    planner = SCRIPTED % ("assess_image_quality", f", latency_s: 0.05, call_log: {log.name}")
    study = write_study(tmp_path, "  type: agent_loop\n  question: Is this image usable?", planner=planner,
                   concurrency=4)
    environment = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode()}
    command = [sys.executable, "-m", "medagent.cli", "run", str(study),
               *(["--store", store_url] if store_url else [])]
    completed_before: dict[str, int] = {}  # image id of a finished case -> planner calls seen for it
    for attempt, kill_after in enumerate((4, 12, 20)):  # kill once this many cases are recorded
        extra = ["--run-id", "killed"] if attempt == 0 else ["--resume", "killed"]
        process = subprocess.Popen([*command, *extra], env=environment, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and recorded_cases(tmp_path / "home", "killed", store_url) < kill_after:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with StudyStore.open(store_url, tmp_path / "home") as store:
            for case in store.cases("killed"):
                image_id = store.tool_calls("killed", case.case_id, 0)[0].arguments["image_id"]
                completed_before.setdefault(image_id, _calls(log, image_id))
    assert 0 < len(completed_before) < CASES, "the kills should land mid-run"
    finish = subprocess.run([*command, "--resume", "killed"], env=environment, capture_output=True, text=True,
                            timeout=600)
    assert finish.returncode == 0, finish.stderr[-2000:]
    with StudyStore.open(store_url, tmp_path / "home") as store:
        cases = store.cases("killed")
        keys = [(case.case_id, case.repeat) for case in cases]
        assert len(keys) == len(set(keys)) == CASES
        assert all(case.status == "succeeded" and case.attempts == 1 for case in cases)
        for image_id, calls_then in completed_before.items():
            assert _calls(log, image_id) == calls_then  # finished cases were not run again
        answers = {case.case_id: case.answer for case in cases}
    # an uninterrupted run of the same study gives the same results
    fresh = {**environment, "MEDAGENT_HOME": str(tmp_path / "fresh")}
    subprocess.run([*command, "--run-id", "whole"], env=fresh, capture_output=True, timeout=600, check=True)
    with StudyStore.open(store_url, tmp_path / "fresh") as store:
        assert {case.case_id: case.answer for case in store.cases("whole")} == answers


def _calls(log: Path, image_id: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if line == image_id) if log.exists() else 0




async def test_planner_requests_are_bounded_per_endpoint_and_tools_per_study(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    from medagent.studies.runner import StudyRunner
    from tests.fake_openai_server import Behaviour, FakeOpenAIServer

    write_manifest(tmp_path, [(f"c{index}", nih_images[index % 2], index % 2, "MF"[index % 2]) for index in range(8)])
    with FakeOpenAIServer([Behaviour("slow", text="No tool was needed.", delay_s=0.3)]) as server:
        study = write_study(tmp_path, "  type: agent_loop\n  question: Describe the image.", concurrency=8)
        text = study.read_text().replace(
            "concurrency: {cases: 8}",
            "concurrency: {cases: 8, per_planner_endpoint: 3, per_expert: {classify_chest_xray: 1}}")
        text = text.replace("graph:", f"planners:\n  planner: {{endpoint: '{server.url}', model: fake-model, "
                                      "tool_calling: native}\ngraph:", 1)
        study.write_text(text)
        config = load_study(study)
        with StudyStore.open(None, settings.home) as store:
            runner = StudyRunner(config, store, settings)
            assert runner.toolbox.registry.concurrency("classify_chest_xray") == 1
            quality = runner.toolbox.registry.get("assess_image_quality")
            assert runner.toolbox.registry.concurrency(quality.name) == quality.policy.max_concurrency  # its own
            events = [event async for event in runner.run("limited")]
            runner.toolbox.close()
            assert events[-1].done == 8 and {case.status for case in store.cases("limited")} == {"succeeded"}
    # eight cases in flight, but never more than three requests at the one endpoint
    assert server.peak_in_flight == 3


async def test_a_study_planner_keeps_unset_fields_unset_so_backend_defaults_apply() -> None:
    """A study that sets only ``max_tokens`` gets the embedded backend's structured tool calling; a study that
    names ``tool_calling`` keeps its choice (the class of bug: a dump of every field turns defaults into choices)."""
    from medagent.agents.embedded import embedded_planner_config
    from medagent.studies.config import PlannerSpec

    config = PlannerSpec.model_validate({"max_tokens": 128}).planner_config()
    assert config.model_fields_set == {"max_tokens"} and config.max_tokens == 128
    assert embedded_planner_config(config).tool_calling == "structured"
    native = PlannerSpec.model_validate({"tool_calling": "native"}).planner_config()
    assert embedded_planner_config(native).tool_calling == "native"
    assert PlannerSpec.model_validate({"backend": "embedded"}).planner_config().model_fields_set == {"backend"}


@pytest.mark.llama
@pytest.mark.asyncio
async def test_an_agent_loop_study_on_the_real_embedded_planner(tmp_path: Path, settings: Settings,
                                                               nih_images: list[Path]) -> None:
    """The real embedded planner (structured tool calling) calls the one offered expert and answers."""
    write_manifest(tmp_path, [("cxr", nih_images[1], 0, "F")])
    study = write_study(tmp_path, "  type: agent_loop\n  question: Is this image of usable quality?")
    study.write_text(study.read_text().replace("graph:", "planners:\n  planner: {max_tokens: 128}\n"
                                                         "experts: [assess_image_quality]\ngraph:", 1))
    config = load_study(study)
    with StudyStore.open(None, settings.home) as store:
        events = [event async for event in run_study(config, store=store, settings=settings, run_id="embedded")]
        assert events[-1].kind == "finished" and events[-1].done == 1
        [case] = store.cases("embedded")
        assert case.status == "succeeded", case.error
        assert "smollm2" in str(case.model_id).lower() and case.answer
        calls = store.tool_calls("embedded", "cxr", 0)
        assert calls and {call.tool for call in calls} == {"assess_image_quality"}
        messages = store.messages("embedded", "cxr", 0)
        assert messages[0]["role"] == "user" and any(m["role"] == "assistant" for m in messages)
        assert case.seed == 7 and case.config_hash == store.get_run("embedded").config_hash  # type: ignore[union-attr]
