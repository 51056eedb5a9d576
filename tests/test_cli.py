"""The medagent command line, run as a user would: as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import TEST_SECRET

MEDAGENT = [sys.executable, "-m", "medagent.cli"]


def _run(args: list[str], home: Path, *, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "COLUMNS": "200", **env}
    return subprocess.run([*MEDAGENT, *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = _run(["--help"], tmp_path)
    assert result.returncode == 0
    assert "inspect" in result.stdout and "experts" in result.stdout


def test_experts_list_reports_missing_weights_and_where_they_go(tmp_path: Path) -> None:
    result = _run(["experts", "list", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    experts = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(experts) == {"image_quality", "dicom_header", "lung_localizer", "lung_field_segmenter",
                            "cxr_classifier", "cxr_anatomy_segmenter", "saliency_grounder", "study_differencer",
                            "volume_segmenter", "text_retriever", "image_retriever"}
    for learned in ("cxr_classifier", "cxr_anatomy_segmenter"):
        weights = experts[learned]["weights"]
        assert weights["present"] is False
        assert weights["expected_path"].startswith(str(tmp_path / "weights"))  # the first folder searched
    volume = experts["volume_segmenter"]["weights"]
    assert volume["present"] is False and "bundles" in volume["expected_path"]
    assert experts["text_retriever"]["weights"]["present"] is False
    assert "medagent index build" in experts["text_retriever"]["weights"]["expected_path"]
    assert experts["image_quality"]["weights"]["weightless"] is True
    assert experts["lung_field_segmenter"]["weights"]["weightless"] is True


def test_inspect_example_ct_json_is_deidentified(tmp_path: Path) -> None:
    result = _run(["inspect", "--example", "ct", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["example:ct"]
    assert report["image"]["modality"] == "CT"
    assert report["results"]["assess_image_quality"]["usable"] is True
    assert report["results"]["read_dicom_header"]["metadata"]["modality"] == "CT"
    assert report["results"]["classify_chest_xray"]["error"]["code"] == "precondition_failed"
    original = pydicom.dcmread(pydicom.examples.get_path("ct"))
    for identifying in (str(original.PatientName), str(original.PatientID), str(original.StudyInstanceUID)):
        assert identifying not in result.stdout


def test_inspect_chest_xray_writes_an_overlay_and_names_missing_weights(tmp_path: Path,
                                                                         nih_images: list[Path]) -> None:
    out = tmp_path / "out"
    result = _run(["inspect", "--modality", "DX", "--out", str(out), "--json", str(nih_images[0])], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)[str(nih_images[0])]
    lungs = report["results"]["locate_lungs"]
    assert {lung["side"] for lung in lungs["lungs"]} == {"right", "left"}
    assert Path(lungs["overlay_file"]).read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(Path(lungs["overlay_file"]).stat().st_mode) == 0o600  # an image of a patient
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    error = report["results"]["classify_chest_xray"]["error"]
    assert error["code"] == "weights_unavailable" and error["family"] == "infrastructure"


def test_inspect_with_untrained_switch_marks_the_result(tmp_path: Path, nih_images: list[Path]) -> None:
    result = _run(["inspect", "--modality", "DX", str(nih_images[1])], tmp_path,
                  MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY="1")
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stdout


@pytest.mark.parametrize("content", [b"not an image at all", b""])
def test_bad_input_gives_one_clean_line_and_a_nonzero_exit(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "Doe_Jane_MRN123.dcm"
    bad.write_bytes(content)
    result = _run(["inspect", str(bad)], tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_file_and_no_arguments(tmp_path: Path) -> None:
    assert _run(["inspect", str(tmp_path / "absent.png")], tmp_path).returncode == 2
    assert _run(["inspect"], tmp_path).returncode != 0


# -- ask and chat -------------------------------------------------------------------------------


def test_ask_through_a_planner_endpoint_with_cli_runner(tmp_path: Path, nih_images: list[Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from medagent.cli.main import app
    from tests.fake_openai_server import FakeOpenAIServer, text, tool

    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setenv("MEDAGENT_XRV_CACHE_DIR", str(tmp_path / "xrv"))
    with FakeOpenAIServer([text("placeholder")], model="remote-planner") as server:
        # the image id is content-addressed, so it is known before the server is asked
        from medagent.tools.builtin import Toolbox

        image_id = Toolbox().attach(nih_images[0], modality="DX").id
        server.behaviours = [tool("locate_lungs", {"image_id": image_id}), text("Both lungs found by locate_lungs.")]
        result = CliRunner().invoke(app, ["ask", "Where are the lungs?", "--image", str(nih_images[0]),
                                          "--modality", "DX", "--endpoint", server.url, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["text"] == "Both lungs found by locate_lungs."
    assert answer["model"] == "remote-planner"
    assert answer["tool_calls"][0]["tool"] == "locate_lungs" and answer["tool_calls"][0]["ok"]
    assert answer["provenance"][0]["expert"] == "lung_localizer"


def test_ask_with_the_planner_down_is_one_clean_error(tmp_path: Path) -> None:
    result = _run(["ask", "hello", "--endpoint", "http://127.0.0.1:9/v1"], tmp_path)
    assert result.returncode == 2
    assert "planner_unavailable" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.llama
def test_chat_demo_runs_offline_on_the_embedded_planner(tmp_path: Path) -> None:
    result = _run(["chat", "--demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "planner smollm2-135m-instruct" in result.stdout
    assert "tool assess_image_quality" in result.stdout or "tool read_dicom_header" in result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent pid
            found.append(int(stat.parent.name))
    return found


@pytest.mark.llama
def test_sigterm_stops_chat_and_its_embedded_planner_server(tmp_path: Path) -> None:
    import signal
    import time

    environment = {**os.environ, "MEDAGENT_HOME": str(tmp_path), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode()}
    chat = subprocess.Popen([*MEDAGENT, "chat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=environment)
    try:
        deadline = time.monotonic() + 60
        servers: list[int] = []
        while time.monotonic() < deadline and not servers:  # the embedded server starts in the background
            servers = [pid for pid in _children(chat.pid)
                       if b"llama_cpp.server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            time.sleep(0.1)
        assert servers, "the embedded planner server did not start"
        chat.send_signal(signal.SIGTERM)
        assert chat.wait(timeout=20) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{servers[0]}").exists():
            time.sleep(0.1)
        assert not Path(f"/proc/{servers[0]}").exists(), "the planner server outlived the chat process"
    finally:
        chat.kill()
        chat.wait()
        assert chat.stdin is not None
        chat.stdin.close()
