"""Every planner backend passes medagent.testing's planner suite: the scripted planner, the real embedded llama.cpp
planner and the real vLLM server (three short completions each); a broken planner fails it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import Planner, PlannerConfig, PlannerTurn, ToolCall
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.testing import PlannerConformance, garbage_server, unreachable_endpoint
from tests.vllm_server import SERVED_NAME, TEST_TIMEOUT_S

SHORT = {"max_tokens": 48, "temperature": 0.0, "read_timeout_s": 120}


def _first_choice(schema: dict[str, Any]) -> Any:
    """The first value a schema allows: how a scripted model honours ``response_schema``."""
    options = schema.get("anyOf")
    if options:
        return _first_choice(options[0])
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("type") == "object":
        return {name: _first_choice(value) for name, value in schema.get("properties", {}).items()
                if name in schema.get("required", [])}
    return "text"


def _model(request: PlannerRequest) -> ScriptResult:
    """A scripted planner that behaves like a served model: honours schemas and calls an offered tool."""
    if request.response_schema is not None:
        return json.dumps(_first_choice(request.response_schema))
    if request.tools and request.tool_choice != "none":
        function = request.tools[0]["function"]
        return [tool_call(function["name"], _first_choice(function["parameters"]))]
    return "Hello there, doctor."


@pytest.mark.asyncio
async def test_the_scripted_planner_passes_the_planner_suite() -> None:
    def failing_script(request: PlannerRequest) -> Any:
        return 42  # a script returning neither text, tool calls nor a turn

    await PlannerConformance(ScriptedPlanner(_model),
                             failing={"script returns garbage": lambda: ScriptedPlanner(failing_script)}).verify()


@pytest.mark.asyncio
async def test_a_dead_or_garbled_openai_compatible_server_fails_with_typed_errors() -> None:
    """The suite's typed-error check on the OpenAI-compatible client alone (no model needed): nothing listening,
    a server speaking garbage, a model the server does not serve."""
    with garbage_server() as garbled:
        suite = PlannerConformance(ScriptedPlanner(_model), failing={
            "nothing listens": lambda: OpenAICompatiblePlanner(PlannerConfig(endpoint=unreachable_endpoint(),
                                                                             max_retries=0)),
            "garbage stream": lambda: OpenAICompatiblePlanner(PlannerConfig(endpoint=garbled, max_retries=0)),
            "model not served": lambda: OpenAICompatiblePlanner(PlannerConfig(endpoint=garbled, model="medgemma")),
        })
        await suite.verify("typed_errors")


# -- the real backends ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedded() -> AsyncIterator[tuple[Planner, Any]]:
    from medagent.agents.pool import PlannerPool

    async with PlannerPool() as pool:
        planner = await pool.planner(PlannerConfig(**SHORT))  # type: ignore[arg-type]
        yield planner, pool


@pytest.mark.llama
@pytest.mark.asyncio(loop_scope="module")
async def test_the_embedded_llama_cpp_planner_passes_the_planner_suite(embedded: tuple[Planner, Any]) -> None:
    planner, pool = embedded
    (server,) = pool._servers.values()
    await PlannerConformance(planner, failing={
        # the embedded backend's client, diagnosing with its real server's log, aimed at a dead port
        "server gone": lambda: OpenAICompatiblePlanner(planner.config, endpoint=unreachable_endpoint(),
                                                       diagnose=server.failure),
    }).verify()


@pytest.mark.vllm
@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.asyncio
async def test_the_vllm_planner_passes_the_planner_suite(vllm_url: str) -> None:
    config = PlannerConfig(endpoint=vllm_url, model=SERVED_NAME, tool_calling="structured", seed=0, **SHORT)
    planner = OpenAICompatiblePlanner(config)
    try:
        await PlannerConformance(planner, failing={
            "model not served": lambda: OpenAICompatiblePlanner(config.model_copy(update={"model": "medgemma"})),
        }).verify()
    finally:
        await planner.aclose()


# -- broken planners: each breaks one contract, and the suite says so -----------------------------------------


class Broken:
    """A scripted planner with one fault."""

    def __init__(self, fault: str) -> None:
        self.inner = ScriptedPlanner(_model)
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

    report = await PlannerConformance(ScriptedPlanner(_model), failing={"raw": lambda: ScriptedPlanner(raw)}).report()
    assert "typed_errors" in report.failed and "ConnectionRefusedError" in report.failed["typed_errors"]
