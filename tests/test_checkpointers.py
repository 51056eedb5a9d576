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
