"""The README's user-tool example (the python block after ``<!-- snippet: user-tool -->``) runs as printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom

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
