"""Every planner backend passes medagent.testing's planner suite, built the way medagent builds them (the planner
factory): ``scripted``, ``embedded`` (the real llama.cpp server) and ``openai`` (the real vLLM server), with three
short completions each; a broken planner fails it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from medagent.agents.factory import PlannerFactory
from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import Planner, PlannerConfig, PlannerTurn, ToolCall
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner
from medagent.testing import PlannerConformance, garbage_server, unreachable_endpoint
from tests.vllm_server import SERVED_NAME, TEST_TIMEOUT_S

SHORT = {"max_tokens": 48, "temperature": 0.0, "read_timeout_s": 120}


def _garbage_script(request: PlannerRequest) -> Any:
    return 42  # a script returning neither text, tool calls nor a turn


@pytest.mark.asyncio
async def test_the_scripted_backend_passes_the_planner_suite() -> None:
    async with PlannerFactory() as planners:
        planner = await planners.build(PlannerConfig(backend="scripted"))
        await PlannerConformance(planner, failing={
            "script returns garbage": lambda: ScriptedPlanner(_garbage_script)}).verify()


@pytest.mark.asyncio
async def test_a_dead_or_garbled_openai_compatible_server_fails_with_typed_errors() -> None:
    """The typed-error check on the openai backend's client alone (no model needed): nothing listening, a server
    speaking garbage, a model the server does not serve."""
    with garbage_server() as garbled:
        suite = PlannerConformance(ScriptedPlanner(_garbage_script), failing={
            "nothing listens": lambda: OpenAICompatiblePlanner(PlannerConfig(endpoint=unreachable_endpoint(),
                                                                             max_retries=0)),
            "garbage stream": lambda: OpenAICompatiblePlanner(PlannerConfig(endpoint=garbled, max_retries=0)),
            "model not served": lambda: OpenAICompatiblePlanner(PlannerConfig(endpoint=garbled, model="medgemma")),
        })
        await suite.verify("typed_errors")


# -- the real backends ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedded() -> AsyncIterator[tuple[Planner, PlannerFactory]]:
    async with PlannerFactory() as planners:
        yield await planners.build(PlannerConfig(backend="embedded", **SHORT)), planners  # type: ignore[arg-type]


@pytest.mark.llama
@pytest.mark.asyncio(loop_scope="module")
async def test_the_embedded_backend_passes_the_planner_suite(embedded: tuple[Planner, PlannerFactory]) -> None:
    planner, planners = embedded
    (server,) = planners.embedded_servers()
    await PlannerConformance(planner, failing={
        # the embedded backend's client, diagnosing with its real server's log, once the server is gone
        "server gone": lambda: OpenAICompatiblePlanner(planner.config, endpoint=unreachable_endpoint(),
                                                       diagnose=server.failure),
    }).verify()


@pytest.mark.vllm
@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.asyncio
async def test_the_openai_backend_on_vllm_passes_the_planner_suite(vllm_url: str) -> None:
    # guided decoding lets a 135M model spend tokens on whitespace inside the JSON: room for a whole call
    config = PlannerConfig(backend="openai", endpoint=vllm_url, model=SERVED_NAME, tool_calling="structured", seed=0,
                           max_tokens=192, read_timeout_s=180)
    async with PlannerFactory() as planners:
        await PlannerConformance(await planners.build(config), failing={
            "model not served": lambda: OpenAICompatiblePlanner(config.model_copy(update={"model": "medgemma"})),
        }).verify()


# -- broken planners: each breaks one contract, and the suite says so -----------------------------------------


class Broken:
    """A scripted planner with one fault."""

    def __init__(self, fault: str) -> None:
        from medagent.agents.dry_run import scripted_planner

        self.inner = scripted_planner()
        self.config = self.inner.config
        self.fault = fault

    async def served_model(self) -> str:
        return "scripted"

    async def complete(self, messages: list[dict[str, Any]], **options: Any) -> PlannerTurn:
        on_token = options.pop("on_token", None)
        turn = await self.inner.complete(messages, **options)
        if self.fault == "drops tool calls":
            turn = turn.model_copy(update={"tool_calls": []})
        elif self.fault == "renames the model":
            turn = turn.model_copy(update={"model": "gpt-4"})
        elif self.fault == "ignores the schema" and options.get("response_schema"):
            turn = turn.model_copy(update={"content": "Yes."})
        elif self.fault == "calls an unoffered tool" and turn.tool_calls:
            turn = turn.model_copy(update={"tool_calls": [ToolCall(id="c", name="rm_rf", arguments="{}")]})
        if on_token is not None and self.fault != "never streams":
            await on_token(turn.content)
        return turn

    async def aclose(self) -> None:
        return None


BROKEN = {"drops tool calls": "tool_calls", "never streams": "streaming", "renames the model": "model_id_as_served",
          "ignores the schema": "structured_output", "calls an unoffered tool": "tool_calls"}


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", sorted(BROKEN))
async def test_a_broken_planner_fails_the_suite(fault: str) -> None:
    report = await PlannerConformance(Broken(fault)).report()  # type: ignore[arg-type]
    assert BROKEN[fault] in report.failed, (report.failed, report.passed)


@pytest.mark.asyncio
async def test_a_planner_raising_raw_errors_fails_the_typed_error_check() -> None:
    def raw(request: PlannerRequest) -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    report = await PlannerConformance(ScriptedPlanner(raw), failing={"raw": lambda: ScriptedPlanner(raw)}).report()
    assert "typed_errors" in report.failed and "ConnectionRefusedError" in report.failed["typed_errors"]
