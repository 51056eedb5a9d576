"""The chat REPL in a real terminal (tmux), driven by keystrokes."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from medagent.tools.builtin import Toolbox
from tests.conftest import TEST_SECRET
from tests.fake_openai_server import FakeOpenAIServer, text, tool

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session, "-S", "-200"], capture_output=True,
                          text=True, check=True).stdout


def _wait_for(session: str, needle: str, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(session)
        if needle in screen:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never appeared; screen:\n{_screen(session)}")


@contextlib.contextmanager
def _chat_in_tmux(home: Path, *options: str, size: tuple[int, int]) -> Iterator[str]:
    """``medagent chat OPTIONS`` in a new tmux session of ``size`` (columns, rows); yields the session name."""
    session = f"medagent-{uuid.uuid4().hex[:8]}"
    command = " ".join(shlex.quote(part) for part in [
        "env", f"MEDAGENT_HOME={home}", f"MEDAGENT_DEID_SECRET={TEST_SECRET.decode()}",
        f"MEDAGENT_XRV_CACHE_DIR={home / 'xrv'}", sys.executable, "-m", "medagent.cli", "chat", *options,
    ])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), command],
                   check=True, env={**os.environ, "TERM": "xterm"})
    try:
        yield session
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_repl_attaches_lists_tools_answers_and_quits(tmp_path: Path, nih_images: list[Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    image_id = Toolbox().attach(nih_images[0], modality="DX").id
    behaviours = [tool("locate_lungs", {"image_id": image_id}), text("Both lungs were found by locate_lungs.")]
    with FakeOpenAIServer(behaviours, model="remote-planner") as server, _chat_in_tmux(
            tmp_path, "--endpoint", server.url, "--modality", "DX", "--image", str(nih_images[0]),
            size=(160, 60)) as session:
        _wait_for(session, "you>")
        subprocess.run(["tmux", "send-keys", "-t", session, "/tools", "Enter"], check=True)
        _wait_for(session, "classify_chest_xray")
        subprocess.run(["tmux", "send-keys", "-t", session, "Where are the lungs?", "Enter"], check=True)
        screen = _wait_for(session, "Both lungs were found by locate_lungs.")
        assert "tool locate_lungs" in screen and f"attached {image_id}" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "/quit", "Enter"], check=True)
        deadline = time.monotonic() + 30
        while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "chat did not exit on /quit"
            time.sleep(0.2)


def test_repl_attach_with_modality_refuses_unknown_commands_and_prints_the_evidence(
        tmp_path: Path, nih_images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    spaced = tmp_path / "chest film.png"
    spaced.write_bytes(nih_images[0].read_bytes())
    image_id = Toolbox().attach(spaced, modality="DX").id
    behaviours = [tool("locate_lungs", {"image_id": image_id}), text("Here is what I found.")]
    with FakeOpenAIServer(behaviours, model="remote-planner") as server, _chat_in_tmux(
            tmp_path, "--endpoint", server.url, size=(200, 80)) as session:
        _wait_for(session, "you>")
        subprocess.run(["tmux", "send-keys", "-t", session, f'/attach "{spaced}" --modality DX', "Enter"],
                       check=True)
        _wait_for(session, f"attached {image_id}: DX")
        subprocess.run(["tmux", "send-keys", "-t", session, "/lungs", "Enter"], check=True)
        _wait_for(session, "unknown command /lungs")
        subprocess.run(["tmux", "send-keys", "-t", session, "Where are the lungs?", "Enter"], check=True)
        _wait_for(session, "Here is what I found.")
        deadline = time.monotonic() + 30
        while "planner remote-planner" not in (evidence := _screen(session).split("Here is what I found.")[-1]):
            assert time.monotonic() < deadline, evidence
            time.sleep(0.3)
        assert "evidence" in evidence and "locate_lungs: Lungs found" in evidence
        assert "overlay: " + str(tmp_path) in evidence.replace("\n", "")
        assert len(server.chat_requests()) == 2  # the unknown command never reached the planner
