"""A chat session resumes by id after its process is killed mid-conversation (SQLite checkpointer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.api import Agent, AgentConfig
from medagent.config import Settings

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from medagent.agents.scripted import ScriptedPlanner, tool_call
    from medagent.api import Agent, AgentConfig
    from medagent.config import Settings

    home, image, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    async def script(request):
        tool_results = [m for m in request.messages if m["role"] == "tool"]
        questions = [m for m in request.messages if m["role"] == "user"]
        if len(questions) == 1:
            return "First answer." if tool_results else [tool_call("assess_image_quality",
                                                                     {"image_id": request.image_ids()[0]})]
        if len(tool_results) == 1:
            return [tool_call("locate_lungs", {"image_id": request.image_ids()[0]}, "lungs-call")]
        marker.write_text("tool result checkpointed")
        await asyncio.sleep(3600)  # the process is killed here, mid-conversation

    async def main():
        settings = Settings(home=home, xrv_cache_dir=home / "xrv")
        config = AgentConfig(checkpoint_url=str(home / "sessions.sqlite"))
        async with Agent(config, settings=settings, planner=ScriptedPlanner(script)) as agent:
            session = agent.session("ward-7")
            await session.attach(image, "DX")
            print((await session.ask("Is the image usable?")).text, flush=True)
            await session.ask("Where are the lungs?")

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
async def test_session_resumes_after_sigkill(settings: Settings, nih_images: list[Path], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(settings.home), str(nih_images[0]), str(marker)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 120
    while not marker.exists():
        if worker.poll() is not None:
            pytest.fail("worker died early: " + worker.communicate()[1].decode()[-2000:])
        assert time.monotonic() < deadline, "the worker never reached the second planner call"
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    stdout, _ = worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL and b"First answer." in stdout

    def finish(request: PlannerRequest) -> str:
        return "Both lungs were found by locate_lungs."

    config = AgentConfig(checkpoint_url=str(settings.home / "sessions.sqlite"))
    async with Agent(config, settings=settings, planner=ScriptedPlanner(finish)) as agent:
        session = agent.session("ward-7")
        history = await session.history()
        roles = [m["role"] for m in history]
        assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant", "tool"]
        assert history[-1]["tool_call_id"] == "lungs-call"  # the tool ran before the kill and is not rerun
        assert await session.unfinished()
        answer = await session.finish()
        assert answer.text == "Both lungs were found by locate_lungs."
        assert not await session.unfinished()
        # the resumed session keeps its image and goes on as usual
        assert len(await session.image_ids()) == 1
        follow_up = await session.ask("Thanks")
        assert follow_up.text == "Both lungs were found by locate_lungs."
        # another session id sees nothing of this one
        assert await agent.session("other-ward").history() == []
    _ = tool_call  # the worker uses it; imported here so a rename breaks this test too
