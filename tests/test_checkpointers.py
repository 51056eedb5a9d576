"""Persistence behaves the same on every checkpointer: SQLite file and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from tests.test_agent_loop import _tool


@pytest.fixture(params=["sqlite", "postgres"])
def checkpoint_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    if request.param == "sqlite":
        return str(settings.home / "sessions.sqlite")
    return str(request.getfixturevalue("postgres_url"))


def _planner() -> ScriptedPlanner:
    def script(request: PlannerRequest) -> object:
        if request.messages[-1]["role"] == "tool":
            return f"answered {len([m for m in request.messages if m['role'] == 'user'])}"
        return [tool_call("send_report", {"image_id": request.image_ids()[0]}, "send")]

    return ScriptedPlanner(script)


@pytest.mark.asyncio
async def test_history_and_pending_approval_survive_a_restart(checkpoint_url: str, settings: Settings,
                                                              nih_images: list[Path]) -> None:
    config = AgentConfig(checkpoint_url=checkpoint_url)
    session_id = f"persist-{Path(checkpoint_url).name[:8]}-{id(config)}"
    async with Agent(config, settings=settings, planner=_planner()) as agent:
        agent.toolbox.registry.register(_tool("send_report", approval=True))
        session = agent.session(session_id)
        await session.attach(nih_images[0], "DX")
        paused = await session.ask("Send it")
        assert paused.pending_approval is not None
    # a new agent, as after a restart, picks up the paused run from the checkpointer
    async with Agent(config, settings=settings, planner=_planner()) as agent:
        agent.toolbox.registry.register(_tool("send_report", approval=True))
        session = agent.session(session_id)
        assert [m["role"] for m in await session.history()] == ["user", "assistant"]
        finished = await session.approve(True)
        assert finished.text == "answered 1" and finished.tool_calls[0]["ok"]
        again = await session.ask("And once more")
        assert again.pending_approval is not None
        assert (await session.approve(False)).text == "answered 2"
        assert len(await session.history()) == 8
        assert await agent.session(session_id + "-other").history() == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("where", "code"), [
    ("postgresql://user:s3cr3t-pw@127.0.0.1:{port}/sessions", "checkpoint_unavailable"),  # nothing listens there
    ("postgresql://user:s3cr3t-pw@[::1/sessions", "checkpoint_url_invalid"),
    ("{folder}", "checkpoint_unavailable"),  # a folder, not a database file
    ("{folder}/not-a-folder.txt/sessions.sqlite", "output_not_writable"),  # its folder cannot be made
])
async def test_a_checkpoint_database_that_cannot_be_opened_is_a_typed_error_without_the_password(
        settings: Settings, tmp_path: Path, unused_tcp_port: int, where: str, code: str) -> None:
    from medagent.errors import MedagentError

    (tmp_path / "not-a-folder.txt").write_text("x")
    url = where.format(port=unused_tcp_port, folder=tmp_path)
    agent = Agent(AgentConfig(checkpoint_url=url), settings=settings, planner=ScriptedPlanner(lambda _: "x"))
    with pytest.raises(MedagentError) as caught:
        await agent.start()
    assert caught.value.code == code
    assert "s3cr3t" not in str(caught.value.to_dict()) and str(tmp_path) not in caught.value.message
    await agent.aclose()


@pytest.mark.asyncio
async def test_an_agent_that_fails_to_start_stops_the_planner_server_it_began(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``async with Agent(...)`` never reaches ``__aexit__`` when starting fails: start cleans up itself."""
    import asyncio

    from medagent.agents.embedded import EmbeddedLlamaServer
    from medagent.errors import MedagentError

    events: list[str] = []

    async def starting(self: EmbeddedLlamaServer) -> str:
        events.append("started")
        await asyncio.Event().wait()  # still loading its model
        return "http://127.0.0.1:9/v1"

    monkeypatch.setattr(EmbeddedLlamaServer, "start", starting)
    monkeypatch.setattr(EmbeddedLlamaServer, "stop", lambda self: events.append("stopped"))
    with pytest.raises(MedagentError, match="checkpoint"):
        async with Agent(AgentConfig(checkpoint_url=str(tmp_path)), settings=settings):
            pass
    await asyncio.sleep(0)
    assert events[-1:] == ["stopped"]  # whether or not the server had begun loading
    agent = Agent(AgentConfig(checkpoint_url=str(tmp_path)), settings=settings)
    try:
        with pytest.raises(MedagentError, match="checkpoint"):
            await agent.start()
    finally:
        await agent.aclose()  # closing again (a caller's finally) is harmless
        await agent.aclose()
    assert all(task.done() for task in asyncio.all_tasks() if task is not asyncio.current_task())
