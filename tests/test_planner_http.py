"""The planner's HTTP client (medagent.agents.openai_http) against raw servers on 127.0.0.1: connections kept
between answers, event lines bounded, the server's wait honoured, refusals quoted."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.openai_http import MAX_RETRY_AFTER_S, _delay, _retry_after
from medagent.agents.planner import PlannerConfig
from medagent.errors import (
    PlannerAnswerTooLarge,
    PlannerProtocolError,
    PlannerRateLimited,
    PlannerRejected,
    PlannerUnavailable,
)

USER = [{"role": "user", "content": "hello"}]
MODELS = json.dumps({"object": "list", "data": [{"id": "raw-model", "object": "model"}]}).encode()


def _answer(text: str) -> bytes:
    chunks = [{"model": "raw-model", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
              {"model": "raw-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"


Reply = Callable[[str, int], bytes]  # (path, request number) -> the whole HTTP response


class RawServer:
    """HTTP/1.1 with keep-alive on a socket of its own; counts connections and requests."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                self.heads.append(head)
                writer.write(self.reply(head.split(b" ")[1].decode(), self.requests))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes, content_type: str = "text/event-stream") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)


def chunked(body: bytes) -> bytes:
    """As vLLM answers: chunked transfer, the terminating chunk in its own write."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")


Start = Callable[[Reply], Awaitable[RawServer]]


@pytest_asyncio.fixture
async def raw_server() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def started(reply: Reply) -> RawServer:
        server = RawServer(reply)
        listening = await asyncio.start_server(server._serve, "127.0.0.1", 0, limit=1 << 20)
        servers.append(listening)
        server.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1"
        return server

    yield started
    for listening in servers:
        listening.close()


def _planner(url: str, **options: object) -> OpenAICompatiblePlanner:
    config = PlannerConfig(endpoint=url, read_timeout_s=5.0, max_retries=1)
    return OpenAICompatiblePlanner(config.model_copy(update=options))


def _replies(answer: Callable[[int], bytes]) -> Reply:
    return lambda path, number: ok(MODELS, "application/json") if path.endswith("/models") else answer(number)


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", [ok, chunked])
async def test_one_connection_carries_every_answer(raw_server: Start, framing: Callable[[bytes], bytes]) -> None:
    server = await raw_server(_replies(lambda number: framing(_answer(f"answer {number}"))))
    planner = _planner(server.url)
    texts = [(await planner.complete(USER)).content for _ in range(20)]
    await planner.aclose()
    assert texts == [f"answer {number}" for number in range(2, 22)]  # request 1 asked for the model list
    assert server.requests == 21 and server.connections == 1


@pytest.mark.asyncio
async def test_an_endless_event_line_is_cut_off_at_the_line_bound(raw_server: Start) -> None:
    endless = b"data: " + b"x" * (8 * 1024 * 1024)  # 8 MiB and never a newline
    server = await raw_server(_replies(lambda number: ok(endless)))
    planner = _planner(server.url, max_tokens=64)
    with pytest.raises(PlannerAnswerTooLarge, match="event line longer than"):
        await planner.complete(USER)
    await planner.aclose()


@pytest.mark.asyncio
async def test_a_long_answer_in_one_event_within_the_bound_is_read(raw_server: Start) -> None:
    server = await raw_server(_replies(lambda number: ok(_answer("y" * 200_000))))  # one delta, one 200 kB line
    planner = _planner(server.url, max_tokens=100_000)
    assert len((await planner.complete(USER)).content) == 200_000
    await planner.aclose()


@pytest.mark.asyncio
async def test_a_refusal_quotes_the_servers_message_and_is_not_retried(raw_server: Start) -> None:
    refusal = json.dumps({"error": {"message": "tool schema has an unsupported keyword", "code": 400}}).encode()
    server = await raw_server(_replies(lambda number: (
        f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {len(refusal)}\r\n\r\n"
        .encode() + refusal)))
    planner = _planner(server.url, max_retries=3)
    with pytest.raises(PlannerRejected, match="unsupported keyword") as refused:
        await planner.complete(USER)
    await planner.aclose()
    assert refused.value.to_dict()["status"] == 400 and server.requests == 2  # models, one chat


@pytest.mark.asyncio
async def test_a_429_waits_as_long_as_the_server_asks_then_retries(raw_server: Start) -> None:
    too_many = b"HTTP/1.1 429 Too Many Requests\r\nretry-after-ms: 700\r\nContent-Length: 0\r\n\r\n"
    server = await raw_server(_replies(lambda number: too_many if number == 2 else ok(_answer("after the wait"))))
    planner = _planner(server.url)
    started = time.monotonic()
    assert (await planner.complete(USER)).content == "after the wait"
    assert 0.7 <= time.monotonic() - started < 2.0
    server.reply = _replies(lambda number: too_many)
    with pytest.raises(PlannerRateLimited):
        await planner.complete(USER)
    await planner.aclose()


def test_the_wait_a_server_asks_for_is_read_in_each_form() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert 28 <= (_retry_after({"Retry-After": later}) or 0) <= 31
    assert _retry_after({"Retry-After": "soon"}) is None and _retry_after({}) is None
    assert _delay(0, 3.0) == 3.0
    assert 0.375 <= _delay(0, None) <= 0.5 and 6.0 <= _delay(10, None) <= 8.0  # backoff with jitter, capped
    assert _delay(0, MAX_RETRY_AFTER_S + 1) <= 0.5  # an unreasonable wait is not honoured


@pytest.mark.asyncio
@pytest.mark.parametrize(("api_key", "expected"), [(None, b"Basic " + base64.b64encode(b"user:secret")),
                                                   ("key-1", b"Bearer key-1")])
async def test_credentials_in_the_url_are_basic_auth_unless_a_key_is_given(raw_server: Start, api_key: str | None,
                                                                           expected: bytes) -> None:
    server = await raw_server(_replies(lambda number: ok(_answer("fine"))))
    planner = _planner(server.url.replace("http://", "http://user:secret@"), api_key=api_key)
    assert (await planner.complete(USER)).content == "fine"
    await planner.aclose()
    sent = [line.split(b":", 1)[1].strip() for head in server.heads for line in head.split(b"\r\n")
            if line.lower().startswith(b"authorization:")]
    assert sent == [expected, expected]


@pytest.mark.asyncio
async def test_the_environments_proxy_is_used_unless_no_proxy_covers_the_host(
        raw_server: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await raw_server(_replies(lambda number: ok(_answer("through the proxy"))))
    monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    unreachable = "http://planner.invalid:8000/v1"  # reached only through the proxy: no such host
    planner = _planner(unreachable, max_retries=0, connect_timeout_s=0.5)
    assert (await planner.complete(USER)).content == "through the proxy"
    await planner.aclose()
    assert all(head.split(b" ")[1].startswith(b"http://planner.invalid:8000/v1/") for head in proxy.heads)
    monkeypatch.setenv("NO_PROXY", "planner.invalid")
    direct = _planner(unreachable, max_retries=0, connect_timeout_s=0.5)
    with pytest.raises(PlannerUnavailable):
        await direct.complete(USER)
    await direct.aclose()
    assert proxy.requests == 2


@pytest.mark.asyncio
async def test_a_model_list_past_its_bound_is_refused_typed(raw_server: Start) -> None:
    huge = json.dumps({"data": [{"id": f"model-{index}"} for index in range(100_000)]}).encode()  # ~2 MB
    server = await raw_server(lambda path, number: ok(huge, "application/json"))
    planner = _planner(server.url)
    with pytest.raises(PlannerProtocolError, match="model list over"):
        await planner.complete(USER)
    await planner.aclose()
