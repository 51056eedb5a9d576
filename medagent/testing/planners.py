"""Conformance of planner backends: streaming, tool calls, structured output, typed errors, model id as served.

Three short completions cover the contract (keep ``max_tokens`` small: the suite's replies are a few words)::

    async with MyPlanner(config) as planner:
        suite = PlannerConformance(planner, failing={"server down": lambda: MyPlanner(dead_config)})
        await suite.verify()

``failing`` names planners of the same backend that cannot work (a dead endpoint: :func:`unreachable_endpoint`;
a server speaking garbage: :func:`garbage_server`); each must fail with a typed medagent error.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from medagent.agents.planner import Planner, PlannerTurn, ToolCall
from medagent.agents.prompts import structured_step_schema
from medagent.errors import MedagentError
from medagent.testing.base import Conformance, NotApplicable, expect, produced

PlannerFactory = Callable[[], Planner | Awaitable[Planner]]

LOOKUP_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_finding",
        "description": "Looks up the definition of a radiology finding by its code.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string", "enum": ["CXR-1", "CXR-2"]}},
                       "required": ["code"], "additionalProperties": False},
        "strict": True,
    },
}
TOOL_MESSAGES = [
    {"role": "system", "content": "You answer by calling the tool lookup_finding with the code the user names."},
    {"role": "user", "content": "Call lookup_finding for finding CXR-1."},
]
STREAM_MESSAGES = [{"role": "user", "content": "Say hello."}]
SCHEMA_MESSAGES = [{"role": "system", "content": 'Reply with one JSON object: {"answer": "yes"} or {"answer": "no"}.'},
                   {"role": "user", "content": "Is the heart in the chest?"}]


class Verdict(BaseModel):
    """What the structured-output check asks for."""

    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "no"]


def unreachable_endpoint() -> str:
    """A base URL on 127.0.0.1 where nothing listens (a port just bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class _Garbage(BaseHTTPRequestHandler):
    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        models = {"object": "list", "data": [{"id": "garbage", "object": "model", "owned_by": "conformance"}]}
        self._send(json.dumps(models).encode(), "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(b"data: this is not json {\n\n", "text/event-stream")

    def log_message(self, *args: Any) -> None:
        return None


@contextlib.contextmanager
def garbage_server() -> Iterator[str]:
    """An OpenAI-compatible server on 127.0.0.1 that lists one model (``garbage``) and answers every completion
    with a stream that is not JSON; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def structured_call(turn: PlannerTurn) -> ToolCall | None:
    """The call a structured-mode reply (``{"call": {"name", "arguments"}}``) makes, as the agent loop reads it."""
    try:
        call = json.loads(turn.content)["call"]
        return ToolCall(id="call_0", name=str(call["name"]), arguments=json.dumps(call["arguments"]))
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
        return None


class PlannerConformance(Conformance):
    """A :class:`~medagent.agents.planner.Planner`'s contract. The planner is the caller's to open and close;
    ``failing`` planners are built, called once and closed by the suite."""

    def __init__(self, planner: Planner, *, failing: Mapping[str, PlannerFactory] | None = None) -> None:
        self.planner = planner
        self.failing = dict(failing or {})
        self._turns: list[PlannerTurn] = []

    @property
    def label(self) -> str:
        return f"PlannerConformance({type(self.planner).__name__})"

    async def _complete(self, messages: list[dict[str, Any]], **options: Any) -> PlannerTurn:
        turn = await self.planner.complete([dict(m) for m in messages], **options)
        expect(isinstance(turn, PlannerTurn), f"complete() returned {type(turn).__name__}, not a PlannerTurn")
        self._turns.append(turn)
        return turn

    async def check_streaming(self) -> None:
        """``on_token`` (awaited when it is a coroutine function) receives the answer as it is produced; the
        tokens joined are exactly the turn's text, and the turn says why it finished."""
        tokens: list[str] = []

        async def on_token(token: str) -> None:
            tokens.append(token)

        turn = await self._complete(STREAM_MESSAGES, on_token=on_token)
        expect(turn.content.strip(), "the answer is empty")
        expect(tokens, "on_token was never called (or never awaited)")
        expect("".join(tokens) == turn.content,
               f"the streamed tokens do not join to the answer: {''.join(tokens)[:80]!r} vs {turn.content[:80]!r}")
        expect(turn.finish_reason, "the turn has no finish_reason")

    async def check_tool_calls(self) -> None:
        """A call of an offered tool reaches the turn: natively (``tools=``, ``tool_choice="required"``) or, for
        ``tool_calling="structured"`` backends, as a reply constrained to the offered calls' schema. The call
        names the offered tool and its arguments are a JSON object valid for the tool's parameters."""
        if self.planner.config.tool_calling == "structured":
            turn = await self._complete(TOOL_MESSAGES, response_schema=structured_step_schema([LOOKUP_TOOL]))
            call = structured_call(turn)
            expect(call is not None, f"the structured reply is not a call: {turn.content[:120]!r}")
            calls = [call] if call is not None else []
        else:
            turn = await self._complete(TOOL_MESSAGES, tools=[LOOKUP_TOOL], tool_choice="required")
            calls = turn.tool_calls
            expect(calls, f"the turn carries no tool call (text: {turn.content[:120]!r})")
        for call in calls:
            expect(call.id, "a tool call has no id")
            expect(call.name == "lookup_finding", f"the call names {call.name!r}, not the offered lookup_finding")
            try:
                arguments = json.loads(call.arguments)
            except json.JSONDecodeError:
                raise AssertionError(f"the call's arguments are not JSON: {call.arguments[:120]!r}") from None
            expect(isinstance(arguments, dict) and arguments.get("code") in ("CXR-1", "CXR-2"),
                   f"the call's arguments do not fit the tool's parameters: {call.arguments[:120]!r}")

    async def check_structured_output(self) -> None:
        """With ``response_schema`` the answer is JSON valid for that schema."""
        turn = await self._complete(SCHEMA_MESSAGES, response_schema=Verdict.model_json_schema())
        try:
            Verdict.model_validate_json(turn.content)
        except ValidationError as exc:
            raise AssertionError(f"the answer does not follow response_schema ({exc.errors()[0]['msg']}): "
                                 f"{turn.content[:120]!r}") from None

    async def check_model_id_as_served(self) -> None:
        """``served_model()`` names the model the server serves (the configured one when ``config.model`` is set)
        and every turn reports that id, never a substitute."""
        served = await self.planner.served_model()
        expect(isinstance(served, str) and served.strip(), f"served_model() returned {served!r}")
        configured = self.planner.config.model
        expect(configured is None or served == configured, f"served_model() is {served!r}; configured {configured!r}")
        turns = self._turns or [await self._complete(STREAM_MESSAGES)]
        for turn in turns:
            expect(turn.model == served, f"a turn reports model {turn.model!r}; the server serves {served!r}")

    async def check_typed_errors(self) -> None:
        """Each ``failing`` planner (server down, garbage replies, a model not served...) fails with a typed
        :class:`~medagent.errors.MedagentError` that has a message, never a raw exception."""
        if not self.failing:
            raise NotApplicable("no failing planner given")
        for name, factory in self.failing.items():
            planner: Planner = await produced(factory)
            try:
                await planner.complete([dict(m) for m in STREAM_MESSAGES])
            except MedagentError as exc:
                expect(str(exc).strip(), f"{name}: the {type(exc).__name__} has no message")
            except Exception as exc:  # noqa: BLE001 - an untyped error is what this check reports
                raise AssertionError(f"{name}: raised {type(exc).__name__} ({exc}), not a typed medagent "
                                     "error") from None
            else:
                raise AssertionError(f"{name}: complete() succeeded; expected a typed error")
            finally:
                await planner.aclose()
