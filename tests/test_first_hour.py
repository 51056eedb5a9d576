"""The first hour of a new user: the README's commands, the chat's commands and what it prints, the study runs
list and the report of a run that failed. Real processes, real images, a real SQLite store; planners are a
scripted OpenAI-compatible server on 127.0.0.1, or the real embedded llama.cpp server (marked ``llama``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET
from tests.fake_openai_server import FakeOpenAIServer, text, tool
from tests.study_files import PIPELINE, write_manifest, write_study

MEDAGENT = [sys.executable, "-m", "medagent.cli"]
TOOL_LINE = re.compile(r"^(\w+) (ready|not ready)(.*)$", re.MULTILINE)


def _environment(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
            "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "COLUMNS": "250", **extra}


def _medagent(args: list[str], home: Path, *, stdin: str = "", timeout: float = 300,
              **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDAGENT, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=_environment(home, **extra))


def _clean(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MEDAGENT_HOME for this process too: image ids are content-addressed, known before a planner is scripted."""
    for name, value in _environment(tmp_path / "home").items():
        if name.startswith("MEDAGENT_"):
            monkeypatch.setenv(name, value)
    return tmp_path / "home"


def _image_id(path: Path, modality: str = "DX") -> str:
    from medagent.tools.builtin import Toolbox

    return Toolbox().attach(path, modality=modality).id


# -- answers: corrective retry, evidence, overlay files --------------------------------------------


def test_an_invalid_call_is_corrected_and_the_answer_ends_with_evidence_and_the_overlay_file(
        home: Path, nih_images: list[Path]) -> None:
    image_id = _image_id(nih_images[0])
    answer = "The planner's own words."
    behaviours = [tool("locate_lungs", {}), tool("locate_lungs", {"image_id": image_id}), text(answer)]
    with FakeOpenAIServer(behaviours, model="remote-planner") as server:
        out = _clean(_medagent(["chat", "--endpoint", server.url, "--image", str(nih_images[0]), "--modality", "DX"],
                               home, stdin="Where are the lungs?\n"))
        requests = [request["body"] for request in server.chat_requests()]
    assert len(requests) == 3
    correction = [m for m in requests[1]["messages"] if m["role"] == "tool"]
    assert "invalid_arguments" in out and "image_id" in correction[0]["content"]
    assert "Correct the arguments" in correction[0]["content"]
    assert answer in out
    evidence = out[out.index("evidence", out.index(answer)):]
    assert re.search(r"^  locate_lungs: Lungs found: right lung at x \d+", evidence, re.MULTILINE), evidence
    overlay = re.search(r"^    overlay: (\S+\.png)$", evidence, re.MULTILINE)
    assert overlay is not None, evidence
    assert Path(overlay.group(1)).read_bytes().startswith(b"\x89PNG")
    assert Path(overlay.group(1)).is_relative_to(home)
    assert "planner remote-planner" in evidence  # the evidence block sits between the prose and the footer


@pytest.mark.torch
def test_ask_prints_the_evidence_and_marks_untrained_results(home: Path, nih_images: list[Path]) -> None:
    from medagent.runtime.untrained import NOTICE

    image_id = _image_id(nih_images[1])
    behaviours = [tool("classify_chest_xray", {"image_id": image_id}), text("Nothing to see.")]
    with FakeOpenAIServer(behaviours, model="remote-planner") as server:
        out = _clean(_medagent(["ask", "Anything wrong?", "--endpoint", server.url, "--image", str(nih_images[1]),
                                "--modality", "DX"], home, MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY="1"))
    evidence = out[out.index("evidence", out.index("Nothing to see.")):]
    line = next(line for line in evidence.splitlines() if line.startswith("  classify_chest_xray"))
    assert "(UNTRAINED test weights)" in line and "highest scores" in line
    assert NOTICE in evidence


def test_a_structured_planner_gets_a_corrective_retry_under_the_same_schema(
        home: Path, nih_images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Schema-constrained planners (the embedded default) are asked again with the schema after an invalid
    call, instead of being told to answer from an error."""
    from typer.testing import CliRunner

    import medagent.cli.chat as chat_cli
    from medagent.agents.planner import PlannerConfig
    from medagent.agents.scripted import PlannerRequest, ScriptedPlanner
    from medagent.api import Agent, AgentConfig
    from medagent.cli.main import app

    image_id = _image_id(nih_images[0])

    def script(request: PlannerRequest) -> str:
        if request.response_schema is None:
            return "The lungs were located."
        arguments = {"image_id": image_id} if request.call_index else {"image_id": 7}
        return json.dumps({"call": {"name": "locate_lungs", "arguments": arguments}})

    config = PlannerConfig(endpoint="scripted://", model="scripted", tool_calling="structured")
    planner = ScriptedPlanner(script, config=config)
    monkeypatch.setattr(chat_cli, "_agent",
                        lambda endpoint, model, backend: Agent(AgentConfig(planner=config), planner=planner))
    result = CliRunner().invoke(app, ["chat", "--image", str(nih_images[0]), "--modality", "DX"],
                                input="Where are the lungs?\n")
    assert result.exit_code == 0, result.output
    schemas = [request.response_schema is not None for request in planner.requests]
    assert schemas == [True, True, False]  # the invalid call, its correction, the answer
    assert "invalid_arguments" in result.output and "The lungs were located." in result.output
    assert "locate_lungs: Lungs found" in result.output


# -- chat commands -----------------------------------------------------------------------------


def test_tools_marks_ready_tools_missing_weights_missing_packages_and_what_is_offered(
        home: Path, tmp_path: Path, nih_images: list[Path]) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    # this process behaves as if faiss were not installed (an import of it fails)
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['faiss'] = None\n")
    with FakeOpenAIServer([text("unused")], model="remote-planner") as server:
        out = _clean(_medagent(["chat", "--endpoint", server.url, "--image", str(nih_images[0]), "--modality", "DX"],
                               home, stdin="/tools\n/quit\n", PYTHONPATH=str(blocker)))
        assert server.chat_requests() == []
    status = {name: (state, rest) for name, state, rest in TOOL_LINE.findall(out)}
    from medagent.tools.builtin import Toolbox

    toolbox = Toolbox()
    assert set(status) == set(toolbox.registry.names()) | {"search_reports", "find_similar_images"}
    assert status["locate_lungs"] == ("ready", " · offered for the attached images")
    assert status["read_dicom_header"] == ("ready", " · not offered (no attached image suits it)")
    assert status["classify_chest_xray"][0] == "not ready" and "weights missing" in status["classify_chest_xray"][1]
    for name in ("search_reports", "find_similar_images"):  # faiss is missing: unavailable, with the fix
        assert status[name][0] == "not ready" and "not installed: faiss" in status[name][1], status[name]
        assert "pip install 'medagent[experts]'" in status[name][1]


def test_unknown_slash_commands_are_refused_and_never_reach_the_planner(home: Path) -> None:
    with FakeOpenAIServer([text("I should never be asked.")], model="remote-planner") as server:
        result = _medagent(["chat", "--endpoint", server.url], home, stdin="/atach scan.png\n/help me\n/quit\n")
        assert server.chat_requests() == []
    _clean(result)
    assert "unknown command /atach; commands: /attach FILE [--modality X]" in result.stderr
    assert "unknown command /help" in result.stderr
    assert "I should never be asked." not in result.stdout


def test_attach_takes_a_modality_and_a_quoted_path_and_explains_its_usage(
        home: Path, tmp_path: Path, nih_images: list[Path]) -> None:
    spaced = tmp_path / "chest film.png"
    shutil.copyfile(nih_images[0], spaced)
    image_id = _image_id(spaced)
    commands = (f'/attach "{spaced}" --modality DX\n/attach\n/attach a.png b.png\n/attach a.png --modality\n'
                "/attach a.png --window 3\nWhere are the lungs?\n")
    with FakeOpenAIServer([text("Answered.")], model="remote-planner") as server:
        result = _medagent(["chat", "--endpoint", server.url], home, stdin=commands)
        offered = [entry["function"]["name"] for entry in server.chat_requests()[0]["body"]["tools"]]
    out = _clean(result)
    assert f"attached {image_id}: DX" in out
    assert "locate_lungs" in offered  # the declared modality reached the planner's offer
    usage = [line for line in result.stderr.splitlines() if "usage: /attach FILE [--modality X]" in line]
    assert len(usage) == 4, result.stderr
    assert "needs a value" in result.stderr and "unknown option --window" in result.stderr


def test_a_resumed_session_lists_its_images(home: Path, nih_images: list[Path]) -> None:
    first_id, second_id = _image_id(nih_images[0]), _image_id(nih_images[1])
    with FakeOpenAIServer([text("First answer.")], model="remote-planner") as server:
        _clean(_medagent(["chat", "--endpoint", server.url, "--session", "ward-7", "--modality", "DX",
                          "--image", str(nih_images[0]), "--image", str(nih_images[1])], home,
                         stdin="Hello?\n"))
        out = _clean(_medagent(["chat", "--endpoint", server.url, "--session", "ward-7"], home, stdin="/quit\n"))
        fresh = _clean(_medagent(["chat", "--endpoint", server.url, "--session", "ward-8"], home, stdin="/quit\n"))
    assert "session ward-7 resumed with 2 image(s):" in out
    assert re.search(rf"^  {first_id}: DX png \d+x\d+$", out, re.MULTILINE), out
    assert re.search(rf"^  {second_id}: DX png \d+x\d+$", out, re.MULTILINE), out
    assert "resumed" not in fresh


def test_the_banner_names_a_served_planner_without_the_demo_warning(home: Path) -> None:
    with FakeOpenAIServer([text("unused")], model="remote-planner") as server:
        out = _clean(_medagent(["chat", "--endpoint", server.url], home, stdin="/quit\n"))
    assert "planner remote-planner" in out and "demo model" not in out


@pytest.mark.llama
def test_the_banner_says_the_embedded_planner_is_the_small_demo_model_and_how_to_connect_another(
        home: Path) -> None:
    out = _clean(_medagent(["chat"], home, stdin="/quit\n"))
    banner = next(line for line in out.splitlines() if "planner" in line)
    assert "small embedded demo model" in banner and "one flag, --endpoint URL" in banner


# -- planner serve recipes -------------------------------------------------------------------------

HF_MODEL = re.compile(r"\b[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+-(?:Instruct|it)\b")


def test_planner_serve_has_a_recipe_for_every_model_the_readme_and_workflows_name() -> None:
    from typer.testing import CliRunner

    from medagent.agents.vllm_recipes import recipe_for
    from medagent.cli.main import app

    root = Path(__file__).resolve().parents[1]
    texts = [(root / "README.md").read_text(), *(p.read_text() for p in sorted((root / "workflows").glob("*.yaml")))]
    models = sorted({match.group(0) for body in texts for match in HF_MODEL.finditer(body)})
    assert "meta-llama/Llama-3.1-8B-Instruct" in models and "Qwen/Qwen2.5-7B-Instruct" in models
    for model in [*models, "Qwen/Qwen2.5-VL-7B-Instruct", "google/medgemma-4b-it"]:
        result = CliRunner().invoke(app, ["planner", "serve", model])
        assert result.exit_code == 0, result.output
        assert "no recipe" not in result.output, model
        recipe = recipe_for(model)
        assert recipe is not None
        if recipe.tool_calling == "native":
            assert "--tool-call-parser" in result.output, model
    assert recipe_for("Qwen/Qwen2.5-VL-7B-Instruct").supports_images  # type: ignore[union-attr]
    assert not recipe_for("Qwen/Qwen2.5-7B-Instruct").supports_images  # type: ignore[union-attr]
    assert "llama3_json" in recipe_for("meta-llama/Llama-3.1-8B-Instruct").flags  # type: ignore[union-attr]


# -- studies: a run whose every case failed ------------------------------------------------------------


def test_a_run_whose_cases_all_failed_is_summarised_listed_and_reported(home: Path, tmp_path: Path,
                                                                          pydicom_ct: Path) -> None:
    broken = [tmp_path / "broken-1.png", tmp_path / "broken-2.png"]
    for path in broken:
        path.write_bytes(b"not an image at all")
    write_manifest(tmp_path, [("b1", broken[0], 1, "F"), ("b2", broken[1], 0, "M"), ("ct", pydicom_ct, 1, "F")])
    study = write_study(tmp_path, PIPELINE, name="all-fail")
    out = _clean(_medagent(["run", str(study), "--run-id", "doomed"], home))
    summary = re.search(r"failed cases in run doomed by error code: (.*); rerun", out)
    assert summary is not None, out
    codes = dict(item.rsplit(" ", 1) for item in summary.group(1).split(", "))
    assert codes.pop("precondition_failed") == "1" and list(codes.values()) == ["2"], codes

    report = _clean(_medagent(["report", "doomed", "--out", str(tmp_path / "report")], home))
    assert "report written to" in report
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| precondition_failed | 1 |" in markdown and f"| {next(iter(codes))} | 2 |" in markdown

    listed = json.loads(_clean(_medagent(["runs", "--json"], home)))
    assert [(r["run_id"], r["study"], r["status"], r["succeeded"], r["failed"]) for r in listed] == [
        ("doomed", "all-fail", "finished", 0, 3)]
    assert listed[0]["started"].startswith("20")
    table = _clean(_medagent(["runs"], home))
    assert re.search(r"doomed\s.*all-fail\s.*finished\s.*\b0\b.*\b3\b", table), table


def test_runs_on_an_empty_store_says_how_to_start_one(home: Path) -> None:
    assert "no runs yet" in _clean(_medagent(["runs"], home))


# -- the README's sequence on the real embedded planner -----------------------------------------------

CORPUS = {
    "cardiomegaly.txt": "Cardiomegaly: a cardiothoracic ratio above 0.5 on a PA chest radiograph suggests an enlarged "
                        "heart.",
    "effusion.md": "Pleural effusion blunts the costophrenic angle; a lateral decubitus view shows small effusions.",
    "ct-dose.txt": "CT acquisition: tube voltage (kVp) and exposure (mAs) set the dose; slice thickness sets detail.",
}


@pytest.mark.llama
def test_the_readme_sequence_with_a_text_index_runs_clean_on_the_embedded_planner(
        home: Path, tmp_path: Path, pydicom_ct: Path) -> None:
    """README, after the first chat --demo: index build (which offers search_reports to every planner call); then
    chat --demo and ask --json again. Each exits 0 without a traceback on the real llama.cpp server."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, body in CORPUS.items():
        (corpus / name).write_text(body)
    # the first command on a fresh home (chat --demo) is tests/test_cli.py::test_chat_demo_runs_offline_on_the_
    # embedded_planner, and its banner test_the_banner_says_...; this test runs what follows it in the README
    _clean(_medagent(["index", "build", str(corpus), "--out", str(home / "indexes" / "text")], home))
    tools = json.loads(_clean(_medagent(["experts", "list", "--json"], home)))
    assert next(row for row in tools if row["name"] == "text_retriever")["weights"]["present"] is True

    demo = _clean(_medagent(["chat", "--demo"], home))
    assert "planner smollm2-135m-instruct" in demo
    assert "\nevidence" in demo  # the schema-constrained first step is a tool call by construction
    answer = json.loads(_clean(_medagent(["ask", "What does the header say about the acquisition?",
                                          "--image", str(pydicom_ct), "--json"], home)))
    assert answer["model"] == "smollm2-135m-instruct"
    assert answer["tool_calls"] and answer["text"] is not None
