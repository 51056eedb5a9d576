"""The OpenAI-compatible planner client and the agent loop against a fault-injecting server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import PlannerConfig
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import (
    ModelNotServed,
    PlannerMisbehaved,
    PlannerProtocolError,
    PlannerRejected,
    PlannerServerError,
    PlannerTimeout,
    PlannerUnavailable,
)
from medagent.workflows.agent_loop import LoopSettings
from tests.fake_openai_server import Behaviour, FakeOpenAIServer, status, text, tool

USER = [{"role": "user", "content": "hello"}]


def _planner(url: str, **options: object) -> OpenAICompatiblePlanner:
    config = PlannerConfig(endpoint=url, read_timeout_s=2.0, connect_timeout_s=1.0, max_retries=2)
    return OpenAICompatiblePlanner(config.model_copy(update=options))


@pytest.mark.asyncio
async def test_streamed_answer_and_the_model_as_served() -> None:
    with FakeOpenAIServer([text("all clear")], model="served-name") as server:
        planner = _planner(server.url)
        tokens: list[str] = []
        turn = await planner.complete(USER, on_token=tokens.append)
        assert turn.content.strip() == "all clear" and "".join(tokens).strip() == "all clear"
        assert turn.model == "served-name" and turn.finish_reason == "stop"
        await planner.aclose()


@pytest.mark.asyncio
async def test_a_model_the_server_does_not_serve_is_refused() -> None:
    with FakeOpenAIServer([text("x")], model="served-name") as server:
        planner = _planner(server.url, model="other-model")
        with pytest.raises(ModelNotServed, match="served-name"):
            await planner.complete(USER)
        await planner.aclose()


@pytest.mark.asyncio
async def test_server_down_is_planner_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens
    planner = _planner(f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(PlannerUnavailable):
        await planner.complete(USER)
    await planner.aclose()


@pytest.mark.asyncio
async def test_slow_server_times_out() -> None:
    with FakeOpenAIServer([Behaviour("slow", delay_s=3.0)]) as server:
        planner = _planner(server.url, read_timeout_s=0.5, max_retries=0)
        started = time.monotonic()
        with pytest.raises(PlannerTimeout):
            await planner.complete(USER)
        assert time.monotonic() - started < 2.5
        await planner.aclose()


@pytest.mark.asyncio
async def test_429_with_retry_after_is_honoured_then_recovers() -> None:
    with FakeOpenAIServer([status(429, Retry_After="1"), text("recovered")]) as server:
        planner = _planner(server.url)
        turn = await planner.complete(USER)
        assert turn.content.strip() == "recovered"
        first, second = server.chat_requests()
        assert second["time"] - first["time"] >= 0.9  # waited as the server asked
        await planner.aclose()


@pytest.mark.asyncio
async def test_500_is_retried_and_persistent_500_is_typed() -> None:
    with FakeOpenAIServer([status(500), text("fine")]) as server:
        planner = _planner(server.url)
        assert (await planner.complete(USER)).content.strip() == "fine"
        await planner.aclose()
    with FakeOpenAIServer([status(503)]) as server:
        planner = _planner(server.url, max_retries=1)
        with pytest.raises(PlannerServerError):
            await planner.complete(USER)
        assert len(server.chat_requests()) == 2
        await planner.aclose()


@pytest.mark.asyncio
async def test_400_is_never_retried() -> None:
    with FakeOpenAIServer([status(400)]) as server:
        planner = _planner(server.url)
        with pytest.raises(PlannerRejected):
            await planner.complete(USER)
        assert len(server.chat_requests()) == 1
        await planner.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["invalid_json", "nested_json", "truncated"])
async def test_garbage_and_truncated_streams_are_protocol_errors(kind: str) -> None:
    with FakeOpenAIServer([Behaviour(kind)]) as server:
        planner = _planner(server.url)
        with pytest.raises(PlannerProtocolError):
            await planner.complete(USER)
        await planner.aclose()


# -- the agent loop over the same server ----------------------------------------------------


async def _ask(server: FakeOpenAIServer, settings: Settings, image: Path, **loop: int) -> object:
    config = AgentConfig(planner=PlannerConfig(endpoint=server.url, read_timeout_s=5, max_retries=0),
                         loop=LoopSettings(**loop), checkpoint_url=str(settings.home / "sessions.sqlite"))
    async with Agent(config, settings=settings) as agent:
        session = agent.session()
        artifact = await session.attach(image, "DX")
        server.image_id = artifact.id  # type: ignore[attr-defined]
        return await session.ask("Is the image usable?")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("bad_call", "expected_message"),
    [(tool("no_such_tool", {"image_id": "img-000000000000"}), "no tool named `no_such_tool`"),
     (tool("assess_image_quality", {"image_id": "img-000000000000"}), "`image_id` must be one of")],
)
async def test_invalid_tool_calls_get_the_message_back_and_recover(
    settings: Settings, nih_images: list[Path], bad_call: Behaviour, expected_message: str
) -> None:
    with FakeOpenAIServer([bad_call, text("Recovered after correction.")]) as server:
        answer = await _ask(server, settings, nih_images[0])
        assert answer.text == "Recovered after correction."  # type: ignore[attr-defined]
        tool_message = server.chat_requests()[1]["body"]["messages"][-1]
        assert tool_message["role"] == "tool" and expected_message in tool_message["content"]


@pytest.mark.asyncio
async def test_repeated_invalid_calls_end_in_a_typed_error(settings: Settings, nih_images: list[Path]) -> None:
    with FakeOpenAIServer([tool("no_such_tool", {})]) as server:
        with pytest.raises(PlannerMisbehaved, match="invalid tool calls"):
            await _ask(server, settings, nih_images[0], max_invalid_calls=1)


@pytest.mark.asyncio
async def test_endless_tool_calls_stop_at_the_step_limit(settings: Settings, nih_images: list[Path]) -> None:
    with FakeOpenAIServer([tool("read_dicom_header", "{}")]) as server:

        def valid_call() -> None:  # each request gets a valid call on the attached image
            server.behaviours = [tool("assess_image_quality", {"image_id": server.image_id})]  # type: ignore[attr-defined]

        original = server._next
        server._next = lambda: (valid_call(), original())[1]  # type: ignore[method-assign]
        with pytest.raises(PlannerMisbehaved, match="after 3 steps"):
            await _ask(server, settings, nih_images[0], max_steps=3)
        assert len(server.chat_requests()) == 3


@pytest.mark.asyncio
async def test_vlm_planners_get_the_deidentified_image_as_a_data_url(settings: Settings,
                                                                     pydicom_ct: Path) -> None:
    with FakeOpenAIServer([text("seen")]) as server:
        config = AgentConfig(planner=PlannerConfig(endpoint=server.url, supports_images=True, max_retries=0),
                             checkpoint_url=str(settings.home / "sessions.sqlite"))
        async with Agent(config, settings=settings) as agent:
            session = agent.session()
            await session.attach(pydicom_ct)
            await session.ask("What do you see?")
        user = next(m for m in server.chat_requests()[0]["body"]["messages"] if m["role"] == "user")
        text_part, image_part = user["content"]
        assert text_part == {"type": "text", "text": "What do you see?"}
        assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
    with FakeOpenAIServer([text("text only")]) as server:
        config = AgentConfig(planner=PlannerConfig(endpoint=server.url, max_retries=0),
                             checkpoint_url=str(settings.home / "sessions2.sqlite"))
        async with Agent(config, settings=settings) as agent:
            session = agent.session()
            await session.attach(pydicom_ct)
            await session.ask("What do you see?")
        messages = server.chat_requests()[0]["body"]["messages"]
        assert all(isinstance(m["content"], str) for m in messages)  # text-only fallback
