"""The README's user-tool example (the python block after ``<!-- snippet: user-tool -->``) runs as printed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medagent.config import Settings
from medagent.tools.builtin import Toolbox
from tests.conftest import REPO_ROOT, TEST_SECRET
from tests.dicom_files import cr_dicom
from tests.fake_openai_server import FakeOpenAIServer, text, tool

MARKER = "<!-- snippet: user-tool -->"
MAX_LINES = 15  # the README promises a user tool in under 15 lines of code


def snippet(readme: str, marker: str = MARKER) -> str:
    """The first fenced python block after ``marker``."""
    assert marker in readme, f"README.md has no {marker} line"
    lines = readme.split(marker, 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.strip() == "```python") + 1
    end = next(index for index in range(start, len(lines)) if lines[index].strip() == "```")
    return "\n".join(lines[start:end]) + "\n"


def test_the_readme_user_tool_snippet_runs_and_calls_the_tool(tmp_path: Path) -> None:
    code = snippet((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert len([line for line in code.splitlines() if line.strip()]) <= MAX_LINES
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
    environment.update({"MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                        "MEDAGENT_PLUGINS": "false"})
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env=environment, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    # the commented output in the snippet is what it prints: the tool ran with the arguments it was given
    printed = [line.split("#", 1)[1].strip() for line in code.splitlines() if "print(" in line and "#" in line]
    assert printed and printed[0] in result.stdout, (printed, result.stdout)


BACKEND_MARKER = "<!-- snippet: backend -->"


def test_the_readme_backend_snippet_consults_a_served_planner_with_a_tenant_and_an_upload(
        nih_images: list[Path], tmp_path: Path) -> None:
    """The README's backend integration, as printed, against a planner served over HTTP on 127.0.0.1: the
    uploaded DICOM is attached de-identified, the planner's tool call runs, and the answer is printed."""
    code = snippet((REPO_ROOT / "README.md").read_text(encoding="utf-8"), BACKEND_MARKER)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16  # "a dozen lines" plus imports
    dataset = pydicom.dcmread(cr_dicom(nih_images[0], tmp_path / "chest.dcm"))
    dataset.PatientName = "Quarrington^Ysolde"
    dataset.save_as(tmp_path / "chest.dcm")
    home = tmp_path / "home"
    # the image id the upload will get: ids are content-addressed and de-identification is keyed, so the
    # same file under the same home and secret attaches to the same id
    image_id = Toolbox(Settings(home=home, deid_secret=TEST_SECRET.decode(), plugins=False)).attach(
        tmp_path / "chest.dcm").id
    with FakeOpenAIServer([tool("assess_image_quality", {"image_id": image_id}),
                           text("The image is usable.")]) as planner:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
        environment.update({"MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                            "MEDAGENT_PLUGINS": "false", "PLANNER_URL": planner.url, "PLANNER_MODEL": "fake-model"})
        result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                                env=environment, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
        requests = json.dumps(planner.chat_requests())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "{'answer': 'The image is usable.', 'tools': ['assess_image_quality']}" in result.stdout, result.stdout
    assert image_id in requests and "Quarrington" not in requests and "Ysolde" not in requests


CURL_MARKER = "<!-- snippet: service-curl -->"


def _bash_block(readme: str, marker: str) -> str:
    lines = readme.split(marker, 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.strip() == "```bash") + 1
    end = next(index for index in range(start, len(lines)) if lines[index].strip() == "```")
    return "\n".join(lines[start:end]) + "\n"


def test_the_readme_curl_walkthrough_of_the_service_runs_as_printed(nih_images: list[Path], tmp_path: Path) -> None:
    """Every command of the walkthrough, on a free port, against `medagent serve` with the scripted planner: the
    upload is de-identified, the stream ends in an answer, the session is deleted and the audit chain verifies."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = _bash_block((REPO_ROOT / "README.md").read_text(encoding="utf-8"), CURL_MARKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = script.replace("8080", str(port))
    (tmp_path / ".venv").symlink_to(REPO_ROOT / ".venv")
    cr_dicom(nih_images[0], tmp_path / "chest.dcm")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
    environment.update({"MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                        "MEDAGENT_PLUGINS": "false", "MEDAGENT_SERVICE_PLANNER": '{"backend": "scripted"}'})
    # files, not pipes: the service started in the background keeps its standard streams open after the script
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=environment,
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # the service the walkthrough started in the background
    output, errors = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert process.returncode == 0, errors[-3000:]
    assert '"deidentified":true' in output and "event: tool_finished" in output and "event: answer" in output
    assert '"messages":[' in output and re.search(r"ok: \d+ records", output), output[-3000:]
