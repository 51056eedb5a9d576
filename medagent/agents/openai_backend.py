"""OpenAI-compatible planner backend (vLLM, the embedded llama.cpp server, any compatible server).

Built on the official OpenAI client (httpx underneath): it streams, retries with backoff on
connection errors, 408, 429 (honouring Retry-After) and 5xx, and never retries a 400.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

from medagent.agents.planner import Message, PlannerConfig, PlannerTurn, TokenCallback, ToolCall, ToolChoice, Usage
from medagent.errors import (
    ModelNotServed,
    PlannerAnswerTooLarge,
    PlannerProtocolError,
    PlannerRateLimited,
    PlannerRejected,
    PlannerServerError,
    PlannerTimeout,
    PlannerUnavailable,
)
from medagent.redaction import redact_url


class OpenAICompatiblePlanner:
    def __init__(self, config: PlannerConfig, endpoint: str | None = None, *,
                 diagnose: Callable[[], str | None] | None = None) -> None:
        """``diagnose``: the server's own words for a failed request when the wire carries none (the
        embedded llama.cpp server logs why it dropped a request, e.g. a grammar it cannot parse)."""
        self._diagnose = diagnose
        import openai

        self.config = config
        base_url = endpoint or config.endpoint
        if not base_url:
            raise ValueError("an endpoint is required (the embedded default provides one)")
        self.base_url = base_url.rstrip("/")
        timeout = openai.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        # plain http (a local vLLM or llama.cpp server) has no certificates to check: skip loading the CA
        # bundle, which costs 50-100 ms per client
        http_client = openai.DefaultAsyncHttpxClient(verify=False) if self.base_url.startswith("http://") else None
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=config.api_key or "not-needed", timeout=timeout,
            max_retries=config.max_retries, http_client=http_client,
        )
        self._served: str | None = None

    async def served_model(self) -> str:
        if self._served is None:
            models = await self._call(self._client.models.list())
            ids = [model.id for model in models.data]
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

    async def _call(self, awaitable: Any) -> Any:
        import openai

        try:
            return await awaitable
        except openai.APITimeoutError as exc:
            raise PlannerTimeout(f"planner server did not answer within {self.config.read_timeout_s:g} s") from exc
        except openai.APIConnectionError as exc:
            raise PlannerUnavailable(f"planner server at {redact_url(self.base_url)} cannot be reached") from exc
        except openai.RateLimitError as exc:
            raise PlannerRateLimited("planner server kept answering 429 Too Many Requests") from exc
        except openai.InternalServerError as exc:
            raise PlannerServerError(f"planner server error {exc.status_code}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code == 408:
                raise PlannerTimeout("planner server answered 408 Request Timeout") from exc
            raise PlannerRejected(f"planner server rejected the request ({exc.status_code}): {_short(exc.message)}",
                                  status=exc.status_code) from exc
        except openai.APIResponseValidationError as exc:
            raise PlannerProtocolError("planner server sent a malformed response") from exc
        except (json.JSONDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested past the parser
            raise PlannerProtocolError("planner server sent a response that is not valid JSON") from exc

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
            raise PlannerRejected(f"planner server failed on this request: {_short(reason, 300)}") from exc
        except TimeoutError:
            if not deadline.expired():
                raise
            raise PlannerTimeout(f"planner call did not finish within its overall deadline of "
                                 f"{self.config.deadline_s:g} s", deadline_s=self.config.deadline_s) from None

    async def _complete(self, messages: list[Message], tools: list[dict[str, Any]] | None, tool_choice: ToolChoice,
                        response_schema: dict[str, Any] | None, on_token: TokenCallback | None) -> PlannerTurn:
        import openai

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
        # the client's generic post: its retries, timeouts and error types, without validating the request
        # against the SDK's TypedDicts and building a pydantic object per streamed chunk (4 of 7 ms of
        # client CPU per call, which bounds how many cases a study keeps in flight); chunks arrive as dicts
        stream = await self._call(self._client.post("/chat/completions", body=request, cast_to=object, stream=True,
                                                    stream_cls=openai.AsyncStream[object]))
        return await self._collect(stream, on_token)

    async def _collect(self, stream: Any, on_token: TokenCallback | None) -> PlannerTurn:
        import openai

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
        except (AttributeError, TypeError, KeyError) as exc:  # a chunk of the wrong shape
            raise PlannerProtocolError(f"planner stream chunk is malformed ({type(exc).__name__})") from exc
        except openai.APIConnectionError as exc:
            raise PlannerProtocolError(f"planner stream broke off ({type(exc).__name__})") from exc
        except openai.APIError as exc:  # an error event in the stream: the server's own message
            body = exc.body if isinstance(exc.body, dict) else {}
            # vLLM refuses a schema it cannot compile this way, after the stream began: a 4xx is a refusal
            refused = str(body.get("code", "")).startswith("4") or "BadRequest" in str(body.get("type", ""))
            raise (PlannerRejected if refused else PlannerProtocolError)(
                f"planner server ended the stream with an error: {_short(exc.message)}") from exc
        except (json.JSONDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested past the parser
            raise PlannerProtocolError("planner stream carried invalid JSON") from exc
        except Exception as exc:  # httpx read errors while streaming
            if type(exc).__module__.startswith(("httpx", "httpcore", "httpx2")):
                raise PlannerProtocolError(f"planner stream broke off ({type(exc).__name__})") from exc
            raise
        finally:  # cut off, timed out or done: the connection is released either way
            await stream.close()
        if finish_reason is None:
            raise PlannerProtocolError("planner stream ended without a finish reason (truncated)")
        if reported_model is None:
            raise PlannerProtocolError("planner response names no model")
        tool_calls = [ToolCall(id=slot["id"] or f"call_{index}", name=slot["name"], arguments=slot["arguments"])
                      for index, slot in sorted(calls.items())]
        return PlannerTurn(content="".join(content), tool_calls=tool_calls, model=reported_model,
                           finish_reason=finish_reason, usage=usage)

    async def aclose(self) -> None:
        await self._client.close()


def _call_chars(delta: dict[str, Any]) -> int:
    """Characters a streamed tool-call delta adds (id, name, arguments), not its JSON framing."""
    function = delta.get("function") or {}
    return sum(len(str(part or "")) for part in (delta.get("id"), function.get("name"), function.get("arguments")))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
