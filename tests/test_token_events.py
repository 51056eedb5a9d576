"""Token events: streamed by Session.events, not made at all while Session.ask collects only the answer.
Against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import PlannerConfig, PlannerTurn
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from tests.fake_openai_server import Behaviour, FakeOpenAIServer

ANSWER = "The heart is not enlarged and the lungs are clear."


class ObservedPlanner(OpenAICompatiblePlanner):
    """The real client, noting for each request whether someone wanted its tokens."""

    wanted: list[bool]

    async def complete(self, messages: Any, **kwargs: Any) -> PlannerTurn:
        self.wanted.append(kwargs.get("on_token") is not None)
        return await super().complete(messages, **kwargs)


@pytest.mark.asyncio
@pytest.mark.parametrize("checkpoint", ["memory://", "sqlite"])
async def test_events_stream_tokens_and_ask_makes_none(tmp_path: Path, checkpoint: str) -> None:
    with FakeOpenAIServer([Behaviour("text", text=ANSWER)]) as server:
        config = PlannerConfig(backend="openai", endpoint=server.url, model="fake-model")
        planner = ObservedPlanner(config)
        planner.wanted = []
        url = checkpoint if checkpoint == "memory://" else str(tmp_path / "sessions.sqlite")
        async with Agent(AgentConfig(planner=config, checkpoint_url=url), settings=Settings(home=tmp_path),
                         planner=planner) as agent:
            session = agent.session("tokens")
            events = [event async for event in session.events("Is the heart enlarged?")]
            tokens = [event.data["text"] for event in events if event.kind == "token"]
            assert "".join(tokens).strip() == ANSWER and len(tokens) == len(ANSWER.split(" "))
            assert events[-1].kind == "answer" and events[-1].data["text"] == ANSWER
            answer = await session.ask("And the lungs?")
            assert answer.text == ANSWER
            assert planner.wanted == [True, False]
            again = [event.kind async for event in session.events("Anything else?")]  # streamed again afterwards
            assert again.count("token") == len(tokens) and planner.wanted == [True, False, True]
            history = await session.history()
            assert [message["role"] for message in history] == ["user", "assistant"] * 3
