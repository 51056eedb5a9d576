"""What a user plugs in reaches the run: planner backends by short name (one factory for the library, the CLI
and studies), ``_target_`` planner factories, tool factories and simulated roles in study YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medagent.agents.factory import PlannerFactory, resolve_backend
from medagent.agents.planner import PlannerConfig
from medagent.config import Settings
from medagent.errors import ExpertToolsMismatch
from medagent.store import StudyStore
from medagent.studies import StudyConfigError, load_study
from medagent.studies.runner import run_study
from tests import plugin_parts
from tests.conftest import SHARED_DATA, TEST_SECRET
from tests.fake_openai_server import FakeOpenAIServer, text
from tests.study_files import agent_loop, write_manifest, write_study

PREFIXES = ("medagent.", "tests.")  # the studies below name parts from this test package
AGENTCLINIC = SHARED_DATA / "agentclinic" / "agentclinic_medqa.jsonl"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "home"))
    return Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv", plugins=False)


async def _run(config: object, settings: Settings, run_id: str) -> StudyStore:
    store = StudyStore.open(None, settings.home)
    events = [event async for event in run_study(config, store=store, settings=settings, run_id=run_id)]  # type: ignore[arg-type]
    assert events[-1].kind == "finished"
    return store


def test_the_scripted_backend_answers_medagent_ask_without_a_model(
        tmp_path: Path, nih_images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--backend scripted`` reaches the library's Agent through the factory: the tool the question names is
    called, no server starts; a backend that does not fit the other options is a typed error."""
    from typer.testing import CliRunner

    from medagent.cli.main import app

    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    result = CliRunner().invoke(app, ["ask", "Run assess_image_quality.", "--image", str(nih_images[0]),
                                      "--modality", "DX", "--backend", "scripted", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["model"] == "scripted:planner"
    assert [(call["tool"], call["ok"]) for call in answer["tool_calls"]] == [("assess_image_quality", True)]
    for options in (["--backend", "openai"], ["--backend", "embedded", "--endpoint", "http://127.0.0.1:9/v1"]):
        refused = CliRunner().invoke(app, ["ask", "hello", *options])
        assert refused.exit_code == 2 and "backend_conflict" in refused.output, refused.output


@pytest.mark.asyncio
async def test_the_openai_backend_in_a_study_reaches_its_server_with_only_the_named_experts(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    write_manifest(tmp_path, [("a", nih_images[0], 1, "M")])
    with FakeOpenAIServer([text("No tool was needed.")], model="served-model") as server:
        study = write_study(tmp_path, agent_loop("Describe the image."), extra="experts: [assess_image_quality]\n")
        study.write_text(study.read_text().replace("graph:", f"planners:\n  planner: {{backend: openai, endpoint: "
                                                             f"'{server.url}', tool_calling: native}}\ngraph:", 1))
        with await _run(load_study(study), settings, "served") as store:
            [case] = store.cases("served")
            assert case.status == "succeeded" and case.model_id == "served-model"
        offered = [tool["function"]["name"] for tool in server.chat_requests()[0]["body"]["tools"]]
    assert offered == ["assess_image_quality"]


def test_backend_names_and_their_conflicts_are_checked_when_a_study_loads(tmp_path: Path) -> None:
    base = "name: b\ngraph:\n  type: agent_loop\n  question: q\nplanners:\n  planner: {%s}\n"
    cases = {"backend: scripted": "scripted", "backend: embedded": "embedded", "max_tokens: 64": "embedded",
             "backend: openai, endpoint: 'http://127.0.0.1:9/v1'": "openai",
             "endpoint: 'http://127.0.0.1:9/v1'": "openai"}
    for body, backend in cases.items():
        (tmp_path / "b.yaml").write_text(base % body)
        assert load_study(tmp_path / "b.yaml").planners["planner"].resolved_backend() == backend, body
    for body, problem in (("backend: openai", "needs an endpoint"),
                          ("backend: embedded, endpoint: 'http://127.0.0.1:9/v1'", "starts its own server")):
        (tmp_path / "b.yaml").write_text(base % body)
        with pytest.raises(StudyConfigError) as caught:
            load_study(tmp_path / "b.yaml")
        assert caught.value.field == "planners.planner.backend" and problem in str(caught.value)


@pytest.mark.llama
@pytest.mark.asyncio
async def test_the_embedded_backend_serves_smollm2_from_the_factory(tmp_path: Path) -> None:
    config = PlannerConfig(backend="embedded", max_tokens=8)
    assert resolve_backend(config) == "embedded"
    async with PlannerFactory(log_dir=tmp_path / "logs") as planners:
        planner = await planners.build(config)
        assert "smollm2" in (await planner.served_model()).lower()
        assert len(planners.embedded_servers()) == 1
    assert planners.embedded_servers() == []  # stopped with the factory


@pytest.mark.asyncio
async def test_a_study_builds_its_own_tools_and_offers_only_the_experts_it_names(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    """A ``_target_`` tool factory's tools are registered and run; the planner (a ``_target_`` factory that
    records its requests) is offered exactly the study's experts; a factory that returns other names than the
    study declares stops the run before any case, typed."""
    write_manifest(tmp_path, [("a", nih_images[0], 1, "M"), ("b", nih_images[1], 0, "F")])
    experts = ("experts:\n  - assess_image_quality\n  - {_target_: tests.plugin_parts.brightness_tools, "
               "kwargs: {scale: 2.0}, tools: [mean_brightness]}\n")
    planner = "{_target_: tests.plugin_parts.recording_planner, kwargs: {tools: [mean_brightness, locate_lungs]}}"
    study = write_study(tmp_path, agent_loop("How bright is it?"), planner=planner, extra=experts)
    plugin_parts.PLANNERS.clear()
    with await _run(load_study(study, allowed_prefixes=PREFIXES), settings, "own-tools") as store:
        assert {case.status for case in store.cases("own-tools")} == {"succeeded"}
        [call] = store.tool_calls("own-tools", "a", 0)  # locate_lungs is not among the experts: never offered
        assert call.tool == "mean_brightness" and call.ok and call.output is not None
        assert call.output["scale"] == 2.0 and 0 < call.output["mean"] <= 2.0
    offered = {name for made in plugin_parts.PLANNERS for request in made.requests for name in request.tool_names}
    assert offered == {"assess_image_quality", "mean_brightness"}
    study.write_text(study.read_text().replace("tools: [mean_brightness]", "tools: [brightness]"))
    with pytest.raises(ExpertToolsMismatch, match=r"experts\[1\].*provides mean_brightness"):
        await _run(load_study(study, allowed_prefixes=PREFIXES), settings, "mismatch")
    with StudyStore.open(None, settings.home) as store:
        assert store.get_run("mismatch") is None


@pytest.mark.asyncio
async def test_a_dialogue_study_runs_with_a_target_planner_and_a_target_patient_role(
        tmp_path: Path, settings: Settings) -> None:
    lines = [line for line in AGENTCLINIC.read_text().splitlines() if line.strip()][:2]
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n")
    study = tmp_path / "dialogue.yaml"
    text_ = """name: own-roles
planners:
  planner: {backend: {_target_: tests.plugin_parts.doctor_planner}}
  measurement: {backend: {_target_: medagent.agents.dry_run.scripted_planner, kwargs: {replies: ["RESULTS: normal"]}}}
  assessor: {backend: scripted}
graph:
  type: dialogue
  max_turns: 4
  roles:
    patient: {_target_: tests.plugin_parts.EchoPatient, kwargs: {prefix: mine}}
dataset: {type: cases, path: cases.jsonl}
"""
    study.write_text(text_)
    with await _run(load_study(study, allowed_prefixes=PREFIXES), settings, "roles") as store:
        cases = store.cases("roles")
        assert len(cases) == 2 and {case.status for case in cases} == {"succeeded"}
        for case in cases:
            assert case.model_id == "my-doctor" and case.result["models"]["patient"] == "echo-patient"
            assert case.result["assessment"]["scores"]["overall"] == "unsatisfactory"  # the scripted assessor
            spoken = [m for m in store.messages("roles", case.case_id, 0) if m["role"] == "patient"]
            assert spoken and all(m["content"].startswith("mine: ") for m in spoken)
            tested = [m["content"] for m in store.messages("roles", case.case_id, 0) if m["role"] == "measurement"]
            assert tested == ["RESULTS: normal"]  # the doctor's one test, answered by the fixed reply
    # a role implementation that cannot take its role's arguments is refused when the study loads, located
    study.write_text(text_.replace("EchoPatient, kwargs: {prefix: mine}", "SilentPatient"))
    with pytest.raises(StudyConfigError) as caught:
        load_study(study, allowed_prefixes=PREFIXES)
    assert caught.value.field == "graph.roles.patient.kwargs" and caught.value.line == 10
