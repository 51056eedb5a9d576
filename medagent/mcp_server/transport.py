"""The two ways ``medagent mcp`` is reached: stdio (one client, the process that started it) and streamable HTTP.

Over HTTP, the uploaded images are kept per MCP session (``Mcp-Session-Id``), so the server speaks the protocol
versions that have sessions: a request of the sessionless 2026-07-28 protocol is answered with the JSON-RPC error
``-32022`` naming the versions served, which makes the SDK's ``auto`` clients fall back to the initialize
handshake.

With a :class:`KeyGate` (``medagent mcp`` over HTTP, unless ``--no-auth`` on loopback), every request carries
``Authorization: Bearer <key>``, a key of ``medagent keys create`` (the service's key store): a missing,
unknown or revoked key is ``401`` before the SDK sees the request, and failed attempts are throttled per
client address (``429``)."""

from __future__ import annotations

import json
import math
from typing import Any, Final, Protocol

import anyio
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp_types import UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from medagent.logs import configure_logging
from medagent.mcp_server.results import base64_length
from medagent.mcp_server.server import MIB, McpExperts

HTTP_PATH = "/mcp"
_VERSION_HEADER = b"mcp-protocol-version"
_AUTHORIZATION: Final = b"authorization"
MAX_KEY_CHARS: Final = 200


class KeyGate(Protocol):
    def verify(self, token: str) -> bool:
        """True for a valid, unrevoked key (may be slow: a password hash; called off the event loop)."""

    def failed(self, client: str) -> float:
        """Count a failed attempt from ``client``; seconds it must wait before the next (0: none)."""


class RequireKey:
    """``401`` for a request without a valid bearer key, ``429`` while a client's failures are throttled."""

    def __init__(self, app: ASGIApp, gate: KeyGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for key, value in scope["headers"] if key == _AUTHORIZATION), "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and 0 < len(token) <= MAX_KEY_CHARS \
                and await anyio.to_thread.run_sync(self.gate.verify, token):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.gate.failed(client)
        if wait:
            await _problem(send, 429, "too many failed logins from this address",
                           [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
            return
        await _problem(send, 401, "a valid API key is required: Authorization: Bearer <key> (medagent keys create)",
                       [(b"www-authenticate", b'Bearer realm="medagent"')])


async def _problem(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": {"code": "unauthorized" if status == 401 else "rate_limited",
                                 "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def quiet_logs(level: str = "WARNING") -> None:
    """JSON lines on stderr for medagent, the SDK and uvicorn alike (exceptions by type only, no values); stdout
    stays the stdio transport's alone."""
    for name in ("medagent", "mcp", "uvicorn"):
        configure_logging(level, logger=name)


async def serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def run_stdio(experts: McpExperts) -> None:
    anyio.run(serve_stdio, experts.server())


class SessionfulProtocolOnly:
    """Answers requests of a protocol version without sessions with ``-32022`` (HTTP 400) and the versions that
    have them; passes everything else to the SDK's app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            version = next((value.decode("latin-1") for key, value in scope["headers"] if key == _VERSION_HEADER),
                           None)
            if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
                await _refuse(send, version)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, requested: str) -> None:
    error = {"code": UNSUPPORTED_PROTOCOL_VERSION, "message": "Unsupported protocol version: this server keeps "
             "uploaded images per MCP session; use a protocol version with sessions",
             "data": {"supported": list(HANDSHAKE_PROTOCOL_VERSIONS), "requested": requested[:64]}}
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def http_app(experts: McpExperts, host: str, gate: KeyGate | None = None) -> ASGIApp:
    """The streamable HTTP app at ``/mcp``: request bodies bounded to what one upload needs, sessions bounded and
    ended when idle, DNS-rebinding protection on loopback (the SDK's default there); behind ``gate``'s keys."""
    limits = experts.limits
    app = experts.server().streamable_http_app(
        streamable_http_path=HTTP_PATH, host=host,
        # a moderately oversized upload reaches the tool (a typed error); a huge body is refused unread (413)
        max_request_body_size=2 * base64_length(limits.max_upload_bytes) + MIB,
        max_sessions=limits.max_sessions, session_idle_timeout=limits.session_idle_s)
    sessionful = SessionfulProtocolOnly(app)
    return sessionful if gate is None else RequireKey(sessionful, gate)


def run_http(experts: McpExperts, host: str, port: int, gate: KeyGate | None = None) -> None:
    import uvicorn

    uvicorn.run(http_app(experts, host, gate), host=host, port=port, log_config=None, access_log=False,
                limit_concurrency=4 * experts.limits.max_sessions, timeout_keep_alive=5,
                timeout_graceful_shutdown=5)

