"""What a planner's tool calls must pass before anything runs: offered tools only, one id per call,
bounded counts and sizes. The gate runs where the planner's turn enters the graph, so what is stored
(the checkpoint) and sent back to the planner never carries more planner text than the caps allow."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from medagent.agents.planner import Message, PlannerTurn
from medagent.errors import (
    ArgumentsTooLarge,
    ModelRetry,
    ToolNotOffered,
    TooManyToolCalls,
    UnknownTool,
)
from medagent.tools.invoke import ErrorRecord
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext

# a call id the planner chose is kept only when it is short and plain; otherwise it is renamed
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class LoopSettings(BaseModel):
    """Limits of one agent loop. A call refused by a cap does not run; the planner is told why (a
    :class:`~medagent.errors.ModelRetry` error) and each refusal counts as an invalid call."""

    max_steps: int = Field(default=6, ge=1, le=100, description="planner calls per question")
    max_invalid_calls: int = Field(default=2, ge=0, le=100, description="invalid tool calls tolerated per question")
    max_calls_per_turn: int = Field(
        default=8, ge=1, le=64,
        description="tool calls run from one planner turn: the first N valid ones run, the rest are refused")
    max_calls_per_question: int = Field(default=24, ge=1, le=512, description="tool calls run per question")
    max_tool_name_chars: int = Field(
        default=64, ge=8, le=256, description="longer tool names are neither offered nor called")
    max_argument_bytes: int = Field(
        default=16_384, ge=256, le=1_048_576, description="UTF-8 size of one call's JSON arguments")
    max_echo_chars: int = Field(
        default=200, ge=16, le=4096,
        description="planner text of a refused call (arguments, name) kept in the history, records and errors")
    allowed_tools: list[str] | None = Field(
        default=None, description="the only tools offered and run (a study's experts); None: every registered tool")


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} characters, cut]"


def _echo(arguments: str, limit: int) -> str:
    """A refused call's arguments as kept: cut to ``limit`` characters yet still a JSON object, since some
    servers (and the study store) parse the arguments of earlier calls; text that is no parseable object
    (broken, or nested past the parser) is wrapped as a string."""
    if len(arguments) <= limit:
        try:
            if isinstance(json.loads(arguments), dict):
                return arguments
        except (ValueError, RecursionError):
            pass
    return json.dumps({"cut": arguments[:limit], "characters": len(arguments)})


def offered_tools(candidates: list[str], settings: LoopSettings) -> list[str]:
    """The tools offered to the planner: suitable ones, within the allow-list and the name-length cap."""
    allowed = None if settings.allowed_tools is None else set(settings.allowed_tools)
    return [name for name in candidates
            if (allowed is None or name in allowed) and len(name) <= settings.max_tool_name_chars]


@dataclass
class GatedTurn:
    message: Message  # the assistant message to store: unique ids, refused calls' text cut to the echo cap
    # per call position: the refusal as an ErrorRecord dump (checkpoint-safe JSON); None: may run
    refusals: list[dict[str, Any] | None] = field(default_factory=list)
    admitted: int = 0  # calls that may run

    @property
    def refused(self) -> int:
        return sum(1 for refusal in self.refusals if refusal is not None)


def _unique_id(call_id: str, position: int, step: int, used: set[str]) -> str:
    base = call_id if _SAFE_ID.fullmatch(call_id) else f"call_{step}_{position}"
    candidate, suffix = base, 0
    while candidate in used:  # duplicates get their own ids, so every tool message answers exactly one call
        suffix += 1
        candidate = f"{base[:48]}_{position}_{suffix}"
    used.add(candidate)
    return candidate


def _check(name: str, arguments: str, offered: list[str], registry: ToolRegistry, context: ToolContext,
           settings: LoopSettings) -> ModelRetry | None:
    listing = ", ".join(offered) or "(none: answer without tools)"
    if len(name) > settings.max_tool_name_chars:
        return ToolNotOffered(f"a tool name of {len(name)} characters is not offered; offered: {listing}")
    if name not in offered:
        shown = shorten(name, settings.max_echo_chars)
        if name not in registry:
            return UnknownTool(f"no tool named `{shown}`; offered: {listing}")
        return ToolNotOffered(f"`{shown}` is not offered for this question; offered: {listing}", tool=name)
    size = len(arguments.encode("utf-8", errors="replace"))
    if size > settings.max_argument_bytes:
        return ArgumentsTooLarge(f"arguments are {size} bytes; the limit is {settings.max_argument_bytes}", tool=name)
    try:
        registry.validate(name, arguments, context)
    except ModelRetry as exc:
        return exc
    return None


def gate_turn(turn: PlannerTurn, *, offered: list[str], registry: ToolRegistry, context: ToolContext,
              settings: LoopSettings, step: int, calls_so_far: int) -> GatedTurn:
    """Decide, per call position, whether it may run; build the message that is stored and sent back."""
    message = turn.as_message()
    gated = GatedTurn(message=message)
    used: set[str] = set()
    for position, entry in enumerate(message.get("tool_calls", [])):
        function = entry["function"]
        entry["id"] = _unique_id(str(entry["id"]), position, step, used)
        error = _check(function["name"], function["arguments"], offered, registry, context, settings)
        if error is None and gated.admitted >= settings.max_calls_per_turn:
            error = TooManyToolCalls(f"only the first {settings.max_calls_per_turn} tool calls of a turn run; "
                                     "call again with fewer", limit=settings.max_calls_per_turn)
        elif error is None and calls_so_far + gated.admitted >= settings.max_calls_per_question:
            error = TooManyToolCalls(f"this question has used its {settings.max_calls_per_question} tool calls; "
                                     "answer with the results you have", limit=settings.max_calls_per_question)
        if error is None:
            gated.admitted += 1
            gated.refusals.append(None)
            continue
        gated.refusals.append(ErrorRecord.from_exception(error).model_dump(mode="json"))
        function["name"] = shorten(function["name"], min(settings.max_echo_chars, settings.max_tool_name_chars))
        function["arguments"] = _echo(function["arguments"], settings.max_echo_chars)
    return gated
