"""The HTTP side of the OpenAI-compatible planner backend, on aiohttp.

A study keeps hundreds of planner requests in flight from one process, so the client's CPU per request bounds
how fast a study runs: this client builds one JSON body, sends it and splits the server-sent events itself, on
aiohttp's pool (the official SDK's httpx pool scans every open connection for each request, a third of a study's
client CPU at 256 cases in flight; on one connection this client also costs 10-30% less). It keeps the SDK's policy: retries with
exponential backoff and jitter on connection errors, timeouts, 408, 409, 429 (honouring ``Retry-After`` up
to a minute) and 5xx; never on another 4xx. Every failure is a typed medagent error.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import ssl
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import yarl

from medagent.errors import (
    PlannerAnswerTooLarge,
    PlannerProtocolError,
    PlannerRateLimited,
    PlannerRejected,
    PlannerServerError,
    PlannerTimeout,
    PlannerUnavailable,
)
from medagent.redaction import redact_url

INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is not waited for: the backoff applies instead
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_MODEL_LIST_BYTES = 1024 * 1024  # GET /models: a list of model cards, not a download  # what is read of a refusal to quote the server's message
_RETRIED_STATUSES = frozenset({408, 409, 429})


def short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class ChatClient:
    """One OpenAI-compatible server: ``GET /models`` and streamed ``POST /chat/completions``."""

    def __init__(self, base_url: str, *, api_key: str | None, connect_timeout_s: float, read_timeout_s: float,
                 max_retries: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.read_timeout_s = read_timeout_s
        self.max_retries = max_retries
        self._headers = {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": "medagent"}
        url = yarl.URL(self.base_url)
        if url.user is None or api_key is not None:
            # a key is sent as a bearer token; credentials in the URL only when no key is given (basic auth)
            self._headers["Authorization"] = f"Bearer {api_key or 'not-needed'}"
            self._url = str(url.with_user(None)).rstrip("/")
        else:
            self._url = self.base_url
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._proxy = _env_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The connection pool of the running event loop (made there: aiohttp binds a pool to its loop)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            context: ssl.SSLContext | bool = False  # plain http: no CA bundle to load (50-100 ms per client)
            if self.base_url.startswith("https://"):
                import certifi  # the same trust store as the official client

                context = ssl.create_default_context(cafile=certifi.where())
            connector = aiohttp.TCPConnector(limit=0, ssl=context)  # the study's own limits bound requests
            # the environment's proxy is read once (_env_proxy), not per request (aiohttp's trust_env reads
            # ~/.netrc in a thread for every request)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)
            self._loop = loop
        return self._session

    async def models(self) -> list[str]:
        response = await self._send("GET", "/models", None)
        try:
            raw = await _read_upto(response, MAX_MODEL_LIST_BYTES)
            if len(raw) > MAX_MODEL_LIST_BYTES:
                raise PlannerProtocolError(f"planner server sent a model list over {MAX_MODEL_LIST_BYTES} bytes")
            body = json.loads(raw)
            return [str(model["id"]) for model in body["data"]]
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PlannerProtocolError("planner server sent a malformed model list") from exc
        finally:
            response.release()

    async def stream_chat(self, body: dict[str, Any], line_limit: int) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed chat completion, as JSON objects; ``line_limit``: the longest event line read
        (a server that sends one endless line cannot fill memory)."""
        response = await self._send("POST", "/chat/completions", json.dumps(body).encode())
        try:
            async for data in _events(response, line_limit):
                if data == b"[DONE]":
                    # the end of the body (a chunked terminator may follow) is read so the connection is kept
                    await _read_upto(response, MAX_ERROR_BODY_BYTES)
                    return
                try:
                    chunk = json.loads(data)
                except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser
                    raise PlannerProtocolError("planner stream carried invalid JSON") from exc
                if isinstance(chunk, dict) and chunk.get("error") is not None:
                    raise _stream_error(chunk["error"])
                yield chunk
        except TimeoutError as exc:  # before the connection errors: aiohttp's read timeout is both
            raise PlannerTimeout(f"planner server sent nothing for {self.read_timeout_s:g} s mid-answer") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise PlannerProtocolError(f"planner stream broke off ({type(exc).__name__})") from exc
        finally:  # done: back to the pool; cut off or timed out midway: closed (aiohttp's release decides)
            response.release()

    async def _send(self, method: str, path: str, data: bytes | None) -> aiohttp.ClientResponse:
        """The response to a request whose status is a success, after the retries the policy allows."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._client().request(method, self._url + path, data=data, proxy=self._proxy,
                                                        headers=self._headers, allow_redirects=False)
            except TimeoutError as exc:
                failure: Exception = PlannerTimeout(f"planner server did not answer within "
                                                    f"{self.read_timeout_s:g} s")
                failure.__cause__ = exc
            except aiohttp.ClientError as exc:
                failure = PlannerUnavailable(f"planner server at {redact_url(self.base_url)} cannot be reached "
                                             f"({type(exc).__name__})")
                failure.__cause__ = exc
            else:
                if response.status < 400:
                    return response
                failure, retry_after = await _status_error(response)
                if response.status < 500 and response.status not in _RETRIED_STATUSES:
                    raise failure  # a refusal: the same request would be refused again
            if attempt >= self.max_retries:
                raise failure
            await asyncio.sleep(_delay(attempt, retry_after))
            attempt += 1

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``, unless ``NO_PROXY`` covers its
    host), as the official client honours them."""
    parsed = yarl.URL(url)
    if not parsed.host or urllib.request.proxy_bypass(parsed.host):
        return None
    return urllib.request.getproxies().get(parsed.scheme)


async def _read_upto(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body to its end, or its first ``limit`` + 1 bytes when it is longer (the caller tells which)."""
    blocks: list[bytes] = []
    size = 0
    while size <= limit:
        block = await response.content.read(limit + 1 - size)
        if not block:
            break
        blocks.append(block)
        size += len(block)
    return b"".join(blocks)


async def _events(response: aiohttp.ClientResponse, line_limit: int) -> AsyncIterator[bytes]:
    """The data of each server-sent event line (``data: ...``); comments and other fields are skipped."""
    partial: list[bytes] = []  # the line being received, in pieces: joined once it ends (no quadratic copying)
    size = 0
    async for block in response.content.iter_any():
        if b"\n" in block:
            lines = b"".join([*partial, block]).split(b"\n")
            tail = lines.pop()
            partial, size = [tail], len(tail)
        else:
            lines = []
            partial.append(block)
            size += len(block)
        if size > line_limit:
            raise PlannerAnswerTooLarge(f"the planner server sent an event line longer than {line_limit} bytes; "
                                        "reading stopped", limit=line_limit)
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    pending = b"".join(partial)
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


async def _status_error(response: aiohttp.ClientResponse) -> tuple[Exception, float | None]:
    """The typed error for a failed status, with the server's message, and the wait it asks for."""
    try:
        raw = (await _read_upto(response, MAX_ERROR_BODY_BYTES))[:MAX_ERROR_BODY_BYTES]
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    finally:
        response.release()
    status = response.status
    retry_after = _retry_after(response.headers)
    if status == 408:
        return PlannerTimeout("planner server answered 408 Request Timeout"), retry_after
    if status == 429:
        return PlannerRateLimited("planner server kept answering 429 Too Many Requests"), retry_after
    if status >= 500:
        return PlannerServerError(f"planner server error {status}"), retry_after
    return PlannerRejected(f"planner server rejected the request ({status}): {short(_message(raw, status))}",
                           status=status), retry_after


def _message(raw: bytes, status: int) -> str:
    """The server's own words: OpenAI's ``{"error": {"message": ...}}``, else the body's text."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return text.strip() or f"Error code: {status}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"Error code: {status} - {text.strip()}"


def _stream_error(error: Any) -> Exception:
    """An error event in the stream. vLLM refuses a schema it cannot compile this way, after the stream began:
    a 4xx code or a BadRequest type is a refusal, anything else a broken answer."""
    body = error if isinstance(error, dict) else {"message": str(error)}
    message = short(str(body.get("message") or "an error"))
    refused = str(body.get("code", "")).startswith("4") or "BadRequest" in str(body.get("type", ""))
    return (PlannerRejected if refused else PlannerProtocolError)(
        f"planner server ended the stream with an error: {message}")


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, ``Retry-After`` as seconds or an HTTP date)."""
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("Retry-After")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return parsed.timestamp() - time.time()
    except (ValueError, TypeError, OverflowError):
        return None


def _delay(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None and 0 < retry_after <= MAX_RETRY_AFTER_S:
        return retry_after
    return min(INITIAL_RETRY_DELAY_S * 2**attempt, MAX_RETRY_DELAY_S) * (1 - 0.25 * random.random())
