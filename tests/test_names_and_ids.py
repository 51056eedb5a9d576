"""Names, ids and paths that cannot collide or escape: image ids, run ids, study names, ``_target_`` paths,
output folders, and text printed on the user's terminal. Driven through the real CLI where a user is."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import PathOutsideHome
from medagent.names import check_name, confined, name_problem
from medagent.store import StudyStore
from medagent.studies import StudyConfigError, load_study
from medagent.studies.runner import run_study
from tests.conftest import TEST_SECRET
from tests.dicom_files import cr_dicom
from tests.study_files import SCRIPTED, agent_loop, write_manifest, write_study

MEDAGENT = [sys.executable, "-m", "medagent.cli"]
ESC = "\x1b"
HOSTILE = "\x1b]0;owned\x1b\\\x1b[2J\x1b[31mred[/] [bold]loud \x9b31m\u202eevil"  # OSC, CSI, C1 CSI, bidi, markup


def _medagent(args: list[str], home: Path, *, cwd: Path | None = None,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "COLUMNS": "250"}
    return subprocess.run([*MEDAGENT, *args], capture_output=True, text=True, env=environment, cwd=cwd,
                          timeout=300, input=stdin if stdin is not None else "")


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip().startswith("error")]
    assert lines, result.stderr
    return lines[-1]


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")} if folder.exists() else set()


# -- names and confinement ----------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["run-1", "cxr_triage.v2", "A", "x" * 128, "0abc"])
def test_safe_names_are_accepted(good: str) -> None:
    assert name_problem(good) is None and check_name(good, "the run id") == good


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "../../outside/x", "a/b", "a\\b", "a b", "a[/]b", "-rf",
                                 "x" * 129, "caf\u00e9", "a\nb", "a\x1bb", "a:b"])
def test_unsafe_names_are_refused_without_echoing_them(bad: str) -> None:
    from medagent.errors import InvalidName

    assert name_problem(bad) is not None
    with pytest.raises(InvalidName) as caught:
        check_name(bad, "the run id")
    assert caught.value.code == "invalid_name" and (len(bad) < 3 or bad not in caught.value.message)


def test_confined_paths_stay_inside_their_folder(tmp_path: Path) -> None:
    root = tmp_path / "home" / "logs"
    root.mkdir(parents=True)
    assert confined(root, "calls.log", "call_log") == root.resolve() / "calls.log"
    (root / "link").symlink_to(tmp_path)
    for bad in ("/etc/passwd", "../x.log", "a/../../x.log", "link/escape.log", "", "."):
        with pytest.raises(PathOutsideHome):
            confined(root, bad, "call_log")


# -- image ids: the same pixels with another header are another image ----------------------------------------


def _header_reader() -> ScriptedPlanner:
    def script(request: PlannerRequest) -> ScriptResult:
        if not any(m["role"] == "tool" for m in request.messages):
            return [tool_call("read_dicom_header", {"image_id": request.image_ids()[0]})]
        return "done"

    return ScriptedPlanner(script)


@pytest.mark.asyncio
async def test_two_sessions_attaching_same_pixel_dicoms_keep_their_own_headers(
        settings: Settings, nih_images: list[Path], tmp_path: Path) -> None:
    """Two real DICOMs with identical pixels but different (kept, de-identified) header values."""
    first = cr_dicom(nih_images[0], tmp_path / "first.dcm")
    second = tmp_path / "second.dcm"
    dataset = pydicom.dcmread(first)
    dataset.ViewPosition, dataset.BodyPartExamined, dataset.Manufacturer = "AP", "ABDOMEN", "Other Vendor"
    dataset.save_as(second)
    assert pydicom.dcmread(second).PixelData == pydicom.dcmread(first).PixelData
    async with Agent(AgentConfig(checkpoint_url=str(tmp_path / "sessions.sqlite")), settings=settings,
                     planner=_header_reader()) as agent:
        one, two = agent.session("one"), agent.session("two")
        image_one = await one.attach(first)
        image_two = await two.attach(second)  # attached after the first session's image
        answers = await asyncio.gather(one.ask("What does the header say?"), two.ask("What does the header say?"))
    headers = [answer.tool_calls[0]["output"]["metadata"] for answer in answers]
    assert (headers[0]["view_position"], headers[0]["body_part"]) == ("PA", "CHEST")  # not the later attach's
    assert (headers[1]["view_position"], headers[1]["body_part"]) == ("AP", "ABDOMEN")
    assert image_one.id != image_two.id
    # attaching again gives the same ids: ids still name content, not attach events
    async with Agent(AgentConfig(checkpoint_url=str(tmp_path / "sessions.sqlite")), settings=settings,
                     planner=_header_reader()) as agent:
        assert (await agent.session("three").attach(first)).id == image_one.id


# -- study names and run ids become keys and folders ---------------------------------------------------------


@pytest.fixture
def study_folder(tmp_path: Path, nih_images: list[Path]) -> Path:
    folder = tmp_path / "work" / "a" / "b"
    folder.mkdir(parents=True)
    write_manifest(folder, [("a", nih_images[0], 1, "M"), ("b", nih_images[1], 0, "F")])
    return folder


@pytest.mark.parametrize("name", ["../../../../outside/x", "a[/]b", "[bold]x", ".hidden"])
def test_an_unsafe_study_name_is_refused_at_its_line(study_folder: Path, tmp_path: Path, name: str) -> None:
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("", ""), name=f"'{name}'")
    home = tmp_path / "work" / "home"
    line = _error_line(_medagent(["run", str(study)], home, cwd=study_folder))
    assert line.startswith("error [study_config]") and "study.yaml:1: name:" in line, line
    assert not (tmp_path / "outside").exists() and not (tmp_path / "work" / "outside").exists()
    assert not (home / "studies.sqlite").exists()  # nothing was started


def test_an_unsafe_run_id_is_refused_and_leaves_no_run(study_folder: Path, tmp_path: Path) -> None:
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("", ""))
    home = tmp_path / "home"
    line = _error_line(_medagent(["run", str(study), "--run-id", "../../../outside/r"], home))
    assert line.startswith("error [invalid_name]") and "outside" not in line
    with StudyStore.open(None, home) as store:
        assert store.runs() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("run_id", ["r" * 128, "short"])
async def test_every_valid_run_id_runs_agent_cases(study_folder: Path, settings: Settings, run_id: str) -> None:
    """A run id of any valid length (up to 128 characters) gives each case a valid session id."""
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("assess_image_quality", ""))
    with StudyStore.open(None, settings.home) as store:
        _ = [event async for event in run_study(load_study(study), store=store, settings=settings, run_id=run_id)]
        cases = store.cases(run_id)
    assert len(cases) == 2 and all(case.status == "succeeded" for case in cases), [c.error for c in cases]


def test_files_that_cannot_be_written_are_a_typed_error_naming_no_path(tmp_path: Path) -> None:
    from medagent.errors import MedagentError
    from medagent.files import create_private, private_dir, touch_private, write_private

    a_file, a_folder = tmp_path / "a-file", tmp_path / "a-folder"
    a_file.write_text("x")
    a_folder.mkdir()
    for attempt in (lambda: private_dir(a_file), lambda: private_dir(a_file / "below"),
                    lambda: write_private(a_folder, b"x"), lambda: write_private(a_file / "below", b"x"),
                    lambda: create_private(a_file / "below", b"x"), lambda: touch_private(a_file / "below")):
        with pytest.raises(MedagentError) as caught:
            attempt()
        assert caught.value.code == "output_not_writable" and str(tmp_path) not in caught.value.message


@pytest.mark.asyncio
async def test_an_out_path_that_cannot_be_written_ends_the_command_typed(study_folder: Path, tmp_path: Path,
                                                                         nih_images: list[Path]) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, xrv_cache_dir=tmp_path / "xrv")
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("assess_image_quality", ""))
    with StudyStore.open(None, home) as store:
        _ = [event async for event in run_study(load_study(study), store=store, settings=settings, run_id="r1")]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for command in (["export", "r1", "--out", str(tmp_path)],
                    ["inspect", str(nih_images[0]), "--modality", "DX", "--out", str(a_file)]):
        line = _error_line(await asyncio.to_thread(_medagent, command, home))
        assert "output_not_writable" in line and str(tmp_path) not in line, line


def test_report_and_export_of_a_stored_unsafe_run_id_stay_inside(study_folder: Path, tmp_path: Path) -> None:
    """A store written before ids were checked (or by hand) holds a run named like a path."""
    home = tmp_path / "home"
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("", ""))
    assert _medagent(["run", str(study), "--run-id", "fine"], home).returncode == 0
    evil = "../../../../outside/x"
    connection = sqlite3.connect(home / "studies.sqlite")
    with connection:
        connection.execute("PRAGMA foreign_keys=OFF")
        connection.execute("UPDATE study_runs SET run_id = ? WHERE run_id = 'fine'", (evil,))
        connection.execute("UPDATE study_cases SET run_id = ? WHERE run_id = 'fine'", (evil,))
    connection.close()
    work = tmp_path / "cwd" / "deep" / "er"
    work.mkdir(parents=True)
    before = _files(tmp_path)
    for command in (["report", evil], ["export", evil]):
        line = _error_line(_medagent(command, home, cwd=work))
        assert line.startswith("error [path_outside_home]"), line
    written = _files(tmp_path) - before
    assert all(path.is_relative_to(home) for path in written), written  # at most the store's own files


def test_a_run_that_fails_validation_leaves_no_running_row(
        study_folder: Path, tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    write_manifest(study_folder, [("a", nih_images[0], 1, "M"), ("b", nih_images[1], "maybe", "F")])
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("", ""))
    config = load_study(study)

    async def go() -> None:
        with StudyStore.open(None, settings.home) as store:
            with pytest.raises(StudyConfigError):
                _ = [event async for event in run_study(config, store=store, settings=settings, run_id="bad")]
            assert store.runs() == []

    asyncio.run(go())
    home = tmp_path / "cli-home"
    line = _error_line(_medagent(["run", str(study), "--run-id", "bad"], home))
    assert "manifest.csv: row 2" in line
    with StudyStore.open(None, home) as store:
        assert [run.status for run in store.runs()] == []


# -- _target_ paths are resolved when the file is validated ---------------------------------------------------


@pytest.mark.parametrize(("backend", "field", "words"), [
    ("{_target_: medagent.tools.builtin.os.system, kwargs: {command: id}}", "_target_", "module attribute"),
    ("{_target_: medagent.config.Path}", "_target_", "outside the allowed prefixes"),
    ("{_target_: medagent.agents.scripted.no_such_planner}", "_target_", "has no attribute"),
    ("{_target_: medagent.agents.scripted.tool_sequence_planner, kwargs: {tools: [], shell: ls}}", "kwargs",
     "does not accept these kwargs"),
])
def test_a_target_that_cannot_run_is_refused_at_validation_with_its_line(
        study_folder: Path, tmp_path: Path, backend: str, field: str, words: str) -> None:
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=backend)
    line_number = next(i for i, line in enumerate(study.read_text().splitlines(), 1) if "backend:" in line)
    home = tmp_path / "home"
    line = _error_line(_medagent(["run", str(study)], home))
    assert line.startswith("error [study_config]") and f"study.yaml:{line_number}: planners.planner.backend" in line
    assert f"backend.{field}" in line and words in line, line
    assert not (home / "studies.sqlite").exists()


# -- call_log cannot pick where medagent writes ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_call_log_outside_the_home_is_refused(study_folder: Path, tmp_path: Path, where: str) -> None:
    target = tmp_path / "planted.log"
    call_log = str(target) if where == "absolute" else "../../planted.log"
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("", f", call_log: '{call_log}'"))
    home = tmp_path / "home"
    result = _medagent(["run", str(study), "--run-id", "r"], home)
    assert "Traceback" not in result.stderr
    with StudyStore.open(None, home) as store:
        cases = store.cases("r")
    assert cases and all(c.status == "failed" and c.error and c.error.code == "path_outside_home" for c in cases)
    assert not target.exists() and not (home.parent / "planted.log").exists()


# -- text from models and data is printed as text --------------------------------------------------------------


def _assert_inert(output: str) -> None:
    assert ESC not in output and "\x9b" not in output and "\u202e" not in output
    assert "red[/] [bold]loud" in output  # the markup is shown literally, not interpreted (nor a crash)


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_planner_text_with_escape_codes_and_markup_is_printed_inert(tmp_path: Path, command: str) -> None:
    from tests.fake_openai_server import FakeOpenAIServer, text

    with FakeOpenAIServer([text(HOSTILE)], model="remote") as server:
        arguments = ["--endpoint", server.url, "--model", "remote"]
        if command == "ask":
            result = _medagent(["ask", "hello", *arguments], tmp_path / "home")
        else:
            result = _medagent(["chat", *arguments], tmp_path / "home", stdin="hello\n/quit\n")
    assert result.returncode == 0, result.stderr
    _assert_inert(result.stdout)


def test_dicom_text_with_escape_codes_is_printed_inert_by_inspect(tmp_path: Path, nih_images: list[Path]) -> None:
    path = cr_dicom(nih_images[0], tmp_path / "evil.dcm")
    dataset = pydicom.dcmread(path)
    dataset.Manufacturer = "\x1b[2J\x1b[31mred[/] [bold]loud"
    dataset.save_as(path)
    result = _medagent(["inspect", str(path)], tmp_path / "home")
    assert "Traceback" not in result.stderr and ESC not in result.stdout + result.stderr


@pytest.mark.parametrize(("variable", "value"), [("MEDAGENT_MODEL_CACHE_MB", "k3y-\x1b[31m-not-a-number"),
                                                 ("MEDAGENT_SEND_BURNED_IN_IMAGES", "k3y-[/]-maybe")])
@pytest.mark.parametrize("command", [["experts", "list"], ["runs"], ["ask", "hello", "--endpoint", "http://127.0.0.1:9"]])
def test_a_bad_setting_in_the_environment_is_a_typed_error_that_does_not_echo_it(
        tmp_path: Path, variable: str, value: str, command: list[str]) -> None:
    environment = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   variable: value}
    result = subprocess.run([*MEDAGENT, *command], capture_output=True, text=True, env=environment, timeout=300,
                            stdin=subprocess.DEVNULL)
    line = _error_line(result)
    assert result.returncode == 2 and "configuration" in line and variable in line
    assert "k3y" not in result.stdout + result.stderr and ESC not in result.stderr


def test_planner_serve_prints_a_model_name_with_markup_literally(tmp_path: Path) -> None:
    result = _medagent(["planner", "serve", "org/odd[/]model[bold]"], tmp_path / "home")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "org/odd[/]model[bold]" in result.stdout


@pytest.mark.parametrize(("ref", "field", "words"), [
    ("{_target_: medagent.tools.builtin.os.system, tools: [mine]}", "experts[0]._target_", "module attribute"),
    ("{_target_: medagent.tools.grounding_tools.grounding_tools, tools: [mine], kwargs: {shell: ls}}",
     "experts[0].kwargs", "does not accept these kwargs"),
])
def test_an_expert_target_that_cannot_run_is_refused_at_validation(
        study_folder: Path, ref: str, field: str, words: str) -> None:
    study = write_study(study_folder, agent_loop("Is it usable?"), planner=SCRIPTED % ("", ""),
                        extra=f"experts:\n  - {ref}\n")
    with pytest.raises(StudyConfigError) as caught:
        load_study(study)
    assert caught.value.field == field and words in str(caught.value)
    assert caught.value.line == next(i for i, line in enumerate(study.read_text().splitlines(), 1) if "- {" in line)
