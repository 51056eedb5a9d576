"""OpenAI-compatible planner backend (vLLM, the embedded llama.cpp server, any compatible server).

It streams every answer, retries with backoff on connection errors, 408, 429 (honouring Retry-After) and 5xx,
never retries a 400, and bounds each answer (:mod:`medagent.agents.openai_http` speaks the HTTP).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Callable
from typing import Any

from medagent.agents.openai_http import ChatClient, short
from medagent.agents.planner import Message, PlannerConfig, PlannerTurn, TokenCallback, ToolCall, ToolChoice, Usage
from medagent.errors import (
    ModelNotServed,
    PlannerAnswerTooLarge,
    PlannerProtocolError,
    PlannerRejected,
    PlannerTimeout,
    PlannerUnavailable,
)

MIN_EVENT_LINE_BYTES = 64 * 1024  # one event line: a chunk's JSON framing around at most the whole answer


class OpenAICompatiblePlanner:
    def __init__(self, config: PlannerConfig, endpoint: str | None = None, *,
                 diagnose: Callable[[], str | None] | None = None) -> None:
        """``diagnose``: the server's own words for a failed request when the wire carries none (the
        embedded llama.cpp server logs why it dropped a request, e.g. a grammar it cannot parse)."""
        self._diagnose = diagnose
        self.config = config
        base_url = endpoint or config.endpoint
        if not base_url:
            raise ValueError("an endpoint is required (the embedded default provides one)")
        self.base_url = base_url.rstrip("/")
        self._client = ChatClient(self.base_url, api_key=config.api_key, connect_timeout_s=config.connect_timeout_s,
                                  read_timeout_s=config.read_timeout_s, max_retries=config.max_retries)
        self._served: str | None = None

    async def served_model(self) -> str:
        if self._served is None:
            ids = await self._client.models()
            if self.config.model is not None:
                if self.config.model not in ids:
                    raise ModelNotServed(f"model {self.config.model!r} is not served at this endpoint; it serves: "
                                         f"{', '.join(ids) or 'nothing'}", served=ids)
                self._served = self.config.model
            elif len(ids) == 1:
                self._served = ids[0]
            else:
                raise ModelNotServed(f"the endpoint serves {len(ids)} models; name one with model=: {', '.join(ids)}",
                                     served=ids)
        return self._served

    async def complete(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        response_schema: dict[str, Any] | None = None,
        on_token: TokenCallback | None = None,
    ) -> PlannerTurn:
        # read timeouts bound each wait for a byte; only an overall deadline bounds a server that trickles
        deadline = asyncio.timeout(self.config.deadline_s)
        try:
            async with deadline:
                return await self._complete(messages, tools, tool_choice, response_schema, on_token)
        except PlannerAnswerTooLarge:  # cut off by us: nothing for the server's log to explain
            raise
        except (PlannerProtocolError, PlannerUnavailable) as exc:
            reason = self._diagnose() if self._diagnose is not None else None
            if reason is None:
                raise
            raise PlannerRejected(f"planner server failed on this request: {short(reason, 300)}") from exc
        except TimeoutError:
            if not deadline.expired():
                raise
            raise PlannerTimeout(f"planner call did not finish within its overall deadline of "
                                 f"{self.config.deadline_s:g} s", deadline_s=self.config.deadline_s) from None

    async def _complete(self, messages: list[Message], tools: list[dict[str, Any]] | None, tool_choice: ToolChoice,
                        response_schema: dict[str, Any] | None, on_token: TokenCallback | None) -> PlannerTurn:
        model = await self.served_model()
        request: dict[str, Any] = {
            "model": model, "messages": messages, "temperature": self.config.temperature,
            "top_p": self.config.top_p, "max_tokens": self.config.max_tokens, "stream": True,
        }
        if self.config.seed is not None:
            request["seed"] = self.config.seed
        if tools:
            request["tools"] = tools
            request["tool_choice"] = tool_choice
        if response_schema is not None:
            if self.config.response_format_style == "json_object_schema":
                request["response_format"] = {"type": "json_object", "schema": response_schema}
            else:
                request["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "medagent_step", "schema": response_schema, "strict": True},
                }
        line_limit = max(MIN_EVENT_LINE_BYTES, 8 * self.config.answer_limit)
        return await self._collect(self._client.stream_chat(request, line_limit), on_token)

    async def _collect(self, stream: AsyncGenerator[dict[str, Any], None], on_token: TokenCallback | None
                       ) -> PlannerTurn:
        content: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        reported_model, finish_reason, usage = None, None, None
        limit, size = self.config.answer_limit, 0
        try:
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    raise PlannerProtocolError("planner stream carried a chunk that is not a JSON object")
                reported_model = chunk.get("model") or reported_model
                if chunk.get("usage"):
                    usage = Usage(prompt_tokens=chunk["usage"].get("prompt_tokens") or 0,
                                  completion_tokens=chunk["usage"].get("completion_tokens") or 0)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    size += len(text or "") + sum(_call_chars(call) for call in delta.get("tool_calls") or [])
                    if size > limit:  # stop reading: a server that ignores max_tokens cannot fill memory
                        raise PlannerAnswerTooLarge(f"the planner's answer passed {limit} characters "
                                                    f"(max_tokens {self.config.max_tokens}); reading stopped",
                                                    limit=limit)
                    if text:
                        content.append(text)
                        if on_token is not None:
                            result = on_token(text)
                            if inspect.isawaitable(result):
                                await result
                    for call in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                        slot["id"] = call.get("id") or slot["id"]
                        function = call.get("function") or {}
                        slot["name"] += function.get("name") or ""
                        slot["arguments"] += function.get("arguments") or ""
                    finish_reason = choice.get("finish_reason") or finish_reason
        except (AttributeError, TypeError, KeyError, ValueError) as exc:  # a chunk of the wrong shape
            raise PlannerProtocolError(f"planner stream chunk is malformed ({type(exc).__name__})") from exc
        finally:  # cut off, timed out or done: the connection is released either way
            await stream.aclose()
        if finish_reason is None:
            raise PlannerProtocolError("planner stream ended without a finish reason (truncated)")
        if reported_model is None:
            raise PlannerProtocolError("planner response names no model")
        tool_calls = [ToolCall(id=slot["id"] or f"call_{index}", name=slot["name"], arguments=slot["arguments"])
                      for index, slot in sorted(calls.items())]
        return PlannerTurn(content="".join(content), tool_calls=tool_calls, model=reported_model,
                           finish_reason=finish_reason, usage=usage)

    async def aclose(self) -> None:
        await self._client.aclose()


def _call_chars(delta: dict[str, Any]) -> int:
    """Characters a streamed tool-call delta adds (id, name, arguments), not its JSON framing."""
    function = delta.get("function") or {}
    return sum(len(str(part or "")) for part in (delta.get("id"), function.get("name"), function.get("arguments")))

