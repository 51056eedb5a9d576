"""Bounds on one planner call, against a real HTTP server on 127.0.0.1: an overall deadline that a
trickling server cannot outlast, and an answer size cap that a server ignoring max_tokens cannot pass."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import PlannerConfig
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import PlannerAnswerTooLarge, PlannerTimeout
from tests.fake_openai_server import FakeOpenAIServer, flood, text, tools, trickle

USER = [{"role": "user", "content": "hello"}]


def _planner(url: str, **options: object) -> OpenAICompatiblePlanner:
    config = PlannerConfig(endpoint=url, read_timeout_s=1.0, connect_timeout_s=1.0, max_retries=0)
    return OpenAICompatiblePlanner(config.model_validate({**config.model_dump(), **options}))


@pytest.mark.asyncio
async def test_a_trickling_server_cannot_keep_a_call_open_past_the_deadline() -> None:
    # every word comes well within the 1 s read timeout; the whole answer takes 3 s
    with FakeOpenAIServer([trickle("one two three four five six seven eight nine ten", 0.3)]) as server:
        planner = _planner(server.url, deadline_s=1.0)
        started = time.monotonic()
        with pytest.raises(PlannerTimeout, match="overall deadline of 1 s") as caught:
            await planner.complete(USER)
        assert time.monotonic() - started < 2.0
        assert caught.value.details["deadline_s"] == 1.0
        await planner.aclose()


@pytest.mark.asyncio
async def test_the_deadline_setting_lets_a_slow_answer_finish_when_it_is_long_enough() -> None:
    with FakeOpenAIServer([trickle("one two three four", 0.3)]) as server:
        planner = _planner(server.url, deadline_s=10.0)
        turn = await planner.complete(USER)
        assert turn.content.split() == ["one", "two", "three", "four"]
        await planner.aclose()


@pytest.mark.asyncio
async def test_the_agent_loop_reports_the_deadline_typed(settings: Settings, nih_images: list[Path]) -> None:
    with FakeOpenAIServer([trickle("a b c d e f g h i j", 0.3)]) as server:
        config = AgentConfig(planner=PlannerConfig(endpoint=server.url, read_timeout_s=1.0, max_retries=0,
                                                   deadline_s=0.8),
                             checkpoint_url=str(settings.home / "sessions.sqlite"))
        async with Agent(config, settings=settings) as agent:
            session = agent.session()
            await session.attach(nih_images[0], "DX")
            with pytest.raises(PlannerTimeout) as caught:
                await session.ask("Is the image usable?")
            assert caught.value.family == "infrastructure" and caught.value.code == "planner_timeout"


@pytest.mark.asyncio
async def test_a_twenty_megabyte_answer_is_cut_off_early() -> None:
    with FakeOpenAIServer([flood("x" * 1000, 20_000)]) as server:  # 20 MB, max_tokens 512
        planner = _planner(server.url)
        started = time.monotonic()
        tokens: list[str] = []
        with pytest.raises(PlannerAnswerTooLarge) as caught:
            await planner.complete(USER, on_token=tokens.append)
        assert time.monotonic() - started < 5.0
        assert caught.value.details["limit"] == PlannerConfig().answer_limit
        assert len("".join(tokens)) <= PlannerConfig().answer_limit
        await planner.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(("options", "cut"), [({}, False), ({"max_answer_chars": 4096, "max_tokens": 16}, True),
                                              ({"max_answer_chars": 1024, "max_tokens": 512}, False)])
async def test_the_answer_cap_is_a_setting_never_below_max_tokens(options: dict[str, int], cut: bool) -> None:
    with FakeOpenAIServer([flood("y" * 100, 50)]) as server:  # 5,000 characters
        planner = _planner(server.url, **options)
        if cut:
            with pytest.raises(PlannerAnswerTooLarge):
                await planner.complete(USER)
        else:
            assert len((await planner.complete(USER)).content) == 5000
        await planner.aclose()


@pytest.mark.asyncio
async def test_tool_call_arguments_count_towards_the_answer_cap() -> None:
    with FakeOpenAIServer([tools(("c1", "assess_image_quality", {"image_id": "z" * 100_000}))]) as server:
        planner = _planner(server.url)
        with pytest.raises(PlannerAnswerTooLarge):
            await planner.complete(USER)
        await planner.aclose()


@pytest.mark.asyncio
async def test_same_id_calls_from_a_server_are_answered_under_distinct_ids(settings: Settings,
                                                                           nih_images: list[Path]) -> None:
    with FakeOpenAIServer([text("placeholder")]) as server:
        config = AgentConfig(planner=PlannerConfig(endpoint=server.url, read_timeout_s=5, max_retries=0),
                             checkpoint_url=str(settings.home / "sessions.sqlite"))
        async with Agent(config, settings=settings) as agent:
            session = agent.session()
            image = await session.attach(nih_images[0], "DX")
            server.behaviours = [tools(("same", "assess_image_quality", {"image_id": image.id}),
                                       ("same", "assess_image_quality", {"image_id": image.id})), text("Both read.")]
            answer = await session.ask("Is the image usable?")
        assert answer.text == "Both read." and len(answer.tool_calls) == 2
        messages = server.chat_requests()[1]["body"]["messages"]
        ids = [call["id"] for call in messages[-3]["tool_calls"]]
        assert ids[0] == "same" and len(set(ids)) == 2
        assert [m["tool_call_id"] for m in messages[-2:]] == ids


def test_planner_limits_are_bounded() -> None:
    for field, value in [("deadline_s", 10_000), ("max_answer_chars", 10**9), ("max_answer_chars", 10),
                         ("max_tokens", 10**7), ("max_retries", 100)]:
        with pytest.raises(ValidationError):
            PlannerConfig.model_validate({field: value})


@pytest.mark.asyncio
async def test_a_tool_call_streamed_in_many_small_deltas_counts_its_text_not_its_framing() -> None:
    """vLLM streams arguments a token at a time; each delta's JSON framing must not count against the cap."""
    arguments = '{"image_id": "' + "a" * 1500 + '"}'
    with FakeOpenAIServer([tools(("c1", "assess_image_quality", arguments), split=2)]) as server:
        planner = _planner(server.url, max_answer_chars=2048, max_tokens=16)
        turn = await planner.complete(USER)
        assert turn.tool_calls[0].arguments == arguments
        await planner.aclose()
