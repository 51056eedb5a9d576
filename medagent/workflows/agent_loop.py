"""The agent loop as a LangGraph graph: planner -> tools -> planner, until an answer or the step limit."""

from __future__ import annotations

import asyncio
import contextvars
import json
import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from medagent.agents.planner import Message, Planner, PlannerTurn, ToolCall
from medagent.agents.prompts import (
    ANSWER_REMINDER,
    compact_for_planner,
    fence_tool_result,
    flatten_tool_turns,
    structured_step_schema,
    system_prompt,
)
from medagent.errors import ApprovalRejected, PlannerMisbehaved
from medagent.tools.builtin import Toolbox
from medagent.tools.invoke import ErrorRecord, invoke
from medagent.workflows.call_gate import LoopSettings, gate_turn, offered_tools

__all__ = ["AgentLoop", "AgentState", "LoopSettings"]


# False while the caller takes only the answer (Session.ask): the planner's tokens are then not turned into events
# (each one a wake-up of the event loop and an event nobody reads; hundreds per answer of a real model)
TOKEN_EVENTS: contextvars.ContextVar[bool] = contextvars.ContextVar("medagent_token_events", default=True)


def _union(left: list[str], right: list[str]) -> list[str]:
    return left + [item for item in right if item not in left]


class AgentState(TypedDict, total=False):
    messages: Annotated[list[Message], operator.add]
    image_ids: Annotated[list[str], _union]
    tool_records: Annotated[list[dict[str, Any]], operator.add]  # ToolCallRecord dumps (JSON: checkpoint-safe)
    steps: int
    invalid_calls: int
    question_calls: int  # tool calls admitted this question
    offered: list[str]  # the tools offered in the last planner turn: the only ones its calls may run
    refusals: list[dict[str, Any] | None]  # per call position of the last turn: why it may not run, or None
    answer: str | None
    model: str | None
    owner: str | None  # the tenant the session belongs to (medagent.api.Session checks it on every use)


def _emit(event: dict[str, Any]) -> None:
    _writer()(event)


def _writer() -> Callable[[dict[str, Any]], None]:
    """Where this node's events go (looked up once per node, not per event)."""
    try:
        return get_stream_writer()
    except RuntimeError:  # not running under a stream: nobody listens
        return _nobody


def _nobody(event: dict[str, Any]) -> None:
    pass


def _correcting(state: AgentState) -> bool:
    """Whether every call of the last turn was invalid (retry family): the planner corrects it under the schema."""
    messages = state.get("messages", [])
    trailing = next((i for i, m in enumerate(reversed(messages)) if m["role"] != "tool"), len(messages))
    records = state.get("tool_records", [])[-trailing:] if trailing else []
    return bool(records) and all((r.get("error") or {}).get("family") == "retry" for r in records)


def _since_last_user(messages: list[Message]) -> list[Message]:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return messages[index + 1 :]
    return messages


class AgentLoop:
    """Builds the graph; ``compile(checkpointer)`` gives the runnable."""

    def __init__(self, planner: Planner, toolbox: Toolbox, settings: LoopSettings | None = None) -> None:
        self.planner = planner
        self.toolbox = toolbox
        self.settings = settings or LoopSettings()
        # per (offered tools, image ids): the schemas and the system prompt. Artifacts are content-addressed and a
        # registered tool never changes, so both are built once instead of at every planner step
        self._prompts: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[list[dict[str, Any]], str]] = {}

    def compile(self, checkpointer: Any = None) -> Any:
        graph = StateGraph(AgentState)
        # the planner node routes itself (Command goto): a conditional edge would cost every step a runnable of its own
        graph.add_node("planner", self.planner_node, destinations=("tools", END))
        graph.add_node("tools", self.tools_node)
        graph.add_edge(START, "planner")
        graph.add_edge("tools", "planner")
        return graph.compile(checkpointer=checkpointer)

    # -- planner ---------------------------------------------------------------------------

    async def planner_node(self, state: AgentState) -> Command[str]:
        """The planner's turn: an answer ends the run, admitted tool calls go to the tools node."""
        update = await self._planner_turn(state)
        return Command(update=update, goto="tools" if update["messages"][-1].get("tool_calls") else END)

    async def _planner_turn(self, state: AgentState) -> dict[str, Any]:
        # a new question starts every count afresh, also after a question that ended in an error
        fresh = (state.get("messages") or [{}])[-1].get("role") == "user"
        steps = 1 if fresh else state.get("steps", 0) + 1
        image_ids = state.get("image_ids", [])
        context = self.toolbox.context(image_ids)
        offered = None if fresh else state.get("offered")  # the offer holds for the whole question
        if offered is None:
            offered = offered_tools(self.toolbox.offered_tools(self.toolbox.image_summaries(image_ids)),
                                    self.settings)
        tools, prompt = self._prompt(offered, image_ids, context)
        messages = [{"role": "system", "content": prompt}, *state.get("messages", [])]
        if self.planner.config.supports_images:
            messages = self.toolbox.with_image_parts(messages, image_ids)
        has_results = any(m["role"] == "tool" for m in _since_last_user(state.get("messages", [])))

        async def emit_token(token: str) -> None:
            _emit({"event": "token", "text": token})

        on_token = emit_token if TOKEN_EVENTS.get() else None
        if self.planner.config.tool_calling == "structured" and tools and (not has_results or _correcting(state)):
            turn = await self._structured_turn(messages, tools, steps)
        elif self.planner.config.tool_calling == "structured":
            # small models answer from the results when told so right before they speak
            reminder = [{"role": "user", "content": ANSWER_REMINDER}] if has_results else []
            turn = await self.planner.complete([*flatten_tool_turns(messages), *reminder], on_token=on_token)
        else:
            turn = await self.planner.complete(messages, tools=tools or None, tool_choice="auto", on_token=on_token)
        if not turn.tool_calls:  # the limits count per question
            return {"messages": [turn.as_message()], "model": turn.model, "answer": turn.content.strip(),
                    "steps": 0, "invalid_calls": 0, "question_calls": 0}
        if steps >= self.settings.max_steps:
            raise PlannerMisbehaved(f"the planner still called tools after {steps} steps (the limit)", steps=steps)
        asked = 0 if fresh else state.get("question_calls", 0)
        gated = gate_turn(turn, offered=offered, registry=self.toolbox.registry, context=context,
                          settings=self.settings, step=steps, calls_so_far=asked)
        invalid_calls = (0 if fresh else state.get("invalid_calls", 0)) + gated.refused
        self._check_invalid(invalid_calls)  # before any call of a doomed turn runs or asks for approval
        update: dict[str, Any] = {"messages": [gated.message], "steps": steps, "refusals": gated.refusals,
                                  "question_calls": asked + gated.admitted}
        # what did not change is not written again: each channel written costs the graph a copy every step
        for key, value in (("offered", offered), ("model", turn.model), ("invalid_calls", invalid_calls)):
            if fresh or key not in state or state[key] != value:  # type: ignore[literal-required]
                update[key] = value
        return update

    def _prompt(self, offered: list[str], image_ids: list[str], context: Any) -> tuple[list[dict[str, Any]], str]:
        key = (tuple(offered), tuple(image_ids))
        cached = self._prompts.get(key)
        if cached is None:
            if len(self._prompts) >= 256:  # a long-lived agent sees many image sets: keep the cache bounded
                self._prompts.clear()
            tools = self.toolbox.registry.openai_tools(context, names=offered) if offered else []
            cached = self._prompts[key] = (tools, system_prompt(self.toolbox.image_summaries(image_ids)))
        return list(cached[0]), cached[1]  # a new list each turn; the entries are shared, read-only

    def _check_invalid(self, invalid_calls: int) -> None:
        if invalid_calls > self.settings.max_invalid_calls:
            raise PlannerMisbehaved(f"the planner made {invalid_calls} invalid tool calls (limit "
                                    f"{self.settings.max_invalid_calls})", invalid_calls=invalid_calls)

    async def _structured_turn(self, messages: list[Message], tools: list[dict[str, Any]], step: int) -> PlannerTurn:
        """Small models: constrain the reply to JSON naming one offered tool and its arguments."""
        turn = await self.planner.complete(flatten_tool_turns(messages), response_schema=structured_step_schema(tools))
        try:
            call = json.loads(turn.content)["call"]
            name, arguments = call["name"], call["arguments"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
            # answer with the text: the tools node is not reached, the caller sees what the model said
            return turn
        return PlannerTurn(
            tool_calls=[ToolCall(id=f"call_{step}_0", name=str(name), arguments=json.dumps(arguments))],
            model=turn.model, finish_reason="tool_calls", usage=turn.usage,
        )

    # -- tools -------------------------------------------------------------------------------

    async def tools_node(self, state: AgentState) -> dict[str, Any]:
        registry = self.toolbox.registry
        calls = state["messages"][-1]["tool_calls"]
        image_ids = state.get("image_ids", [])
        context = self.toolbox.context(image_ids)
        refusals = state.get("refusals") or []
        if len(refusals) != len(calls):  # a checkpoint from before the gate: the registry still checks offers
            refusals = [None] * len(calls)
        offered = state.get("offered")
        if offered is None:
            offered = offered_tools(self.toolbox.offered_tools(self.toolbox.image_summaries(image_ids)),
                                    self.settings)
        # decisions by position, never by the planner's id; every interrupt first: a resumed node reruns
        decisions: list[bool | None] = [None] * len(calls)
        for position, call in enumerate(calls):
            name = call["function"]["name"]
            if refusals[position] is None and name in registry and registry.get(name).policy.requires_approval:
                decision = interrupt({"tool": name, "arguments": call["function"]["arguments"], "call_id": call["id"],
                                      "position": position, "calls": len(calls)})
                decisions[position] = bool(decision.get("approved") if isinstance(decision, dict) else decision)

        emit = _writer()

        async def run(position: int, call: dict[str, Any]) -> tuple[Message, dict[str, Any], bool]:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            refusal = refusals[position]
            refused = None if refusal is None else ErrorRecord.from_dict(refusal)  # by the gate: already counted
            if refusal is None:
                emit({"event": "tool_started", "call_id": call["id"], "tool": name, "arguments": arguments})
                if decisions[position] is False:
                    refused = ErrorRecord.from_exception(ApprovalRejected(f"a human rejected the call to {name}"))
            done = await invoke(registry, name, arguments, context, call_id=call["id"], offered=offered,
                                approved=decisions[position] is True, refused=refused)
            record, error = done.record, done.record.error
            invalid = False
            if error is None:
                # looked up on the class: a missing attribute on a pydantic instance costs an exception
                summarise = getattr(type(done.value), "summary_text", None)
                summary = summarise(done.value) if summarise is not None else ""
                content = fence_tool_result(name, compact_for_planner(record.output), summary)
            elif refusal is not None or error.family == "retry":
                invalid = refusal is None  # a refusal of the gate was counted when the turn came in
                content = _retry_text(name, error)
            else:
                content = fence_tool_result(name, {"error": error.code, "message": error.message})
            dumped = record.as_json()
            emit({"event": "tool_finished", **dumped})
            return _answer(call, content), dumped, invalid

        # one call (the usual turn) runs in this task: gather would wrap it in a task of its own
        outcomes = ([await run(0, calls[0])] if len(calls) == 1 else
                    await asyncio.gather(*(run(position, call) for position, call in enumerate(calls))))
        invalid_calls = state.get("invalid_calls", 0) + sum(1 for _, _, invalid in outcomes if invalid)
        self._check_invalid(invalid_calls)
        update: dict[str, Any] = {"messages": [message for message, _, _ in outcomes],
                                  "tool_records": [record for _, record, _ in outcomes]}
        if invalid_calls != state.get("invalid_calls", 0):
            update["invalid_calls"] = invalid_calls
        return update


def _answer(call: dict[str, Any], content: str) -> Message:
    return {"role": "tool", "tool_call_id": call["id"], "content": content}


def _retry_text(name: str, error: ErrorRecord) -> str:
    fix = " Correct the arguments and call again." if error.code in ("invalid_arguments", "arguments_too_large") else ""
    return f"Invalid call to {name}: {error.message}.{fix}"
