"""A scripted planner for deterministic tests of the graph (never a substitute for real-server tests)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medagent.agents.planner import Message, PlannerConfig, PlannerTurn, TokenCallback, ToolCall, ToolChoice
from medagent.errors import PlannerProtocolError


@dataclass
class PlannerRequest:
    """What the scripted function sees for one planner call."""

    messages: list[Message]
    tools: list[dict[str, Any]]
    tool_choice: ToolChoice
    response_schema: dict[str, Any] | None
    call_index: int

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.tools]

    def image_ids(self) -> list[str]:
        for tool in self.tools:
            prop = tool["function"]["parameters"]["properties"].get("image_id")
            if prop and "enum" in prop:
                return list(prop["enum"])
        return []


ScriptResult = PlannerTurn | str | list[ToolCall]
ScriptFunction = Callable[[PlannerRequest], ScriptResult | Awaitable[ScriptResult]]


def tool_call(name: str, arguments: str | dict[str, Any], call_id: str | None = None) -> ToolCall:
    import json

    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=call_id or f"call_{name}", name=name, arguments=text)


class ScriptedPlanner:
    """Returns what ``function`` returns: text (an answer) or tool calls. Streams text word by word."""

    def __init__(self, function: ScriptFunction, model: str = "scripted", config: PlannerConfig | None = None) -> None:
        self.function = function
        self.model = model
        self.config = config or PlannerConfig(endpoint="scripted://", model=model)
        self.requests: list[PlannerRequest] = []

    async def served_model(self) -> str:
        return self.model

    async def complete(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        response_schema: dict[str, Any] | None = None,
        on_token: TokenCallback | None = None,
    ) -> PlannerTurn:
        request = PlannerRequest([dict(m) for m in messages], list(tools or []), tool_choice, response_schema,
                                 len(self.requests))
        self.requests.append(request)
        result = self.function(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, PlannerTurn):
            return result
        if isinstance(result, str):
            if on_token is not None:
                words = result.split(" ")
                for index, word in enumerate(words):  # the tokens join to exactly the text, as a server's do
                    outcome = on_token(word if index == len(words) - 1 else word + " ")
                    if inspect.isawaitable(outcome):
                        await outcome
            return PlannerTurn(content=result, model=self.model, finish_reason="stop")
        if not isinstance(result, list) or not all(isinstance(call, ToolCall) for call in result):
            raise PlannerProtocolError(f"the scripted planner's function returned {type(result).__name__}; expected "
                                       "text, a list of ToolCall or a PlannerTurn")
        return PlannerTurn(tool_calls=list(result), model=self.model, finish_reason="tool_calls")

    async def aclose(self) -> None:
        return None


def tool_sequence_planner(tools: list[str], *, answer_prefix: str = "Findings from the expert tools:",
                          latency_s: float = 0.0, call_log: str | None = None, ignore_offer: bool = False,
                          config: PlannerConfig | None = None) -> ScriptedPlanner:
    """A deterministic baseline planner for studies: calls ``tools`` in order on the first attached
    image, then answers with the tool results it received. ``call_log``: a file name relative to
    ``MEDAGENT_HOME/logs`` (nothing absolute, no '..': study files must not pick where medagent writes)
    that gets one line (the first image id) per planner call, for counting calls across processes.
    ``ignore_offer``: call the tools whether offered or not (a planner that disobeys: tests of the gate). Usable
    from study YAML as
    ``backend: {_target_: medagent.agents.scripted.tool_sequence_planner, kwargs: {tools: [...]}}``."""
    import asyncio

    log_path = _log_path(call_log) if call_log is not None else None

    async def script(request: PlannerRequest) -> ScriptResult:
        if latency_s:
            await asyncio.sleep(latency_s)
        if log_path is not None:
            await asyncio.to_thread(_append_line, log_path, (request.image_ids() or ["-"])[0])
        done = sum(1 for message in request.messages if message["role"] == "tool")
        offered = set(request.tool_names)
        if done < len(tools) and (ignore_offer or tools[done] in offered) and request.image_ids():
            return [tool_call(tools[done], {"image_id": request.image_ids()[0]}, call_id=f"call_{done}")]
        results = [str(message["content"]) for message in request.messages if message["role"] == "tool"]
        return " ".join([answer_prefix, *results]) if results else f"{answer_prefix} none were available."

    return ScriptedPlanner(script, model="scripted:tool-sequence", config=config)


def _append_line(path: Path, line: str) -> None:
    from medagent.files import PRIVATE_FILE_MODE

    # 0600 if the file was removed since the planner made it; one short write: atomic with O_APPEND
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags, PRIVATE_FILE_MODE), "a", encoding="utf-8") as stream:
        stream.write(f"{line}\n")


def _log_path(call_log: str) -> Path:
    from medagent.config import Settings
    from medagent.files import private_dir, touch_private
    from medagent.names import confined

    return touch_private(confined(private_dir(Settings().home / "logs"), call_log, "call_log"))
