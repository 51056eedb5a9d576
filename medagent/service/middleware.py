"""The ASGI layer around every request: its id, its body bound, its log line and its audit record.

- A request id (random; a client's own is not trusted: it could carry anything) set for every log line and
  returned as ``X-Request-Id``.
- Bodies are bounded before anything reads them: a declared ``Content-Length`` over the bound is refused at
  once with ``413``, and a body that streams past it raises :class:`BodyTooLarge` (a ``413`` too) in
  whatever was reading it. Uploads and chat completions (images inline) have their own, larger bounds.
- One log line per request: method, the route as a template, status, duration, key id; never the raw path
  or query string.
- One audit record per routed request (health and readiness aside), written when the response has been sent
  (a stream: when it ends): the key, the endpoint, the status and the input hashes the route noted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medagent.logs import log_context
from medagent.names import name_problem
from medagent.service.audit import AuditEntry

log = logging.getLogger("medagent.service.http")
UNAUDITED: Final = frozenset({"/v1/health", "/v1/ready"})
_UPLOAD_PATH = re.compile(r"/v1/sessions/[^/]+/images")
_SESSION_PATH = re.compile(r"/v1/sessions/([^/]+)(?:/.*)?")
CHAT_PATH: Final = "/v1/chat/completions"
MULTIPART_OVERHEAD: Final = 64 * 1024
# a body over its bound is read and dropped up to this much more before the 413 goes out: a client still sending
# would otherwise see its connection reset instead of the answer; a larger one is answered and the connection closed
DRAIN_BYTES: Final = 16 * 1024**2


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int,
                 record: Callable[[AuditEntry], Awaitable[None]], max_chat_body_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.max_chat_body_bytes = max_chat_body_bytes or max_body_bytes
        self.record = record

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and _UPLOAD_PATH.fullmatch(scope["path"]):
            return self.max_upload_bytes + MULTIPART_OVERHEAD
        if scope["method"] == "POST" and scope["path"] == CHAT_PATH:  # the OpenAI facade: images inline, base64
            return self.max_chat_body_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        in_session = _SESSION_PATH.fullmatch(scope["path"])
        with log_context(request_id=request_id, session_id=_safe_id(in_session.group(1)) if in_session else None):
            await self._serve(scope, receive, send, request_id)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started, limit = time.monotonic(), self._limit(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state.update(request_id=request_id, inputs={}, key_id=None)
        status = 500
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                status = 413
                if declared.isdigit() and int(declared) - limit <= DRAIN_BYTES:
                    await _drain(receive, int(declared))
                await _refuse(send, request_id, limit, openai=scope["path"] == CHAT_PATH)
                return
            received = 0

            async def bounded_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        if message.get("more_body", False):
                            await _drain(receive, limit + DRAIN_BYTES - received)
                        raise BodyTooLarge(limit)
                return message

            async def tracking_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
                await send(message)

            await self.app(scope, bounded_receive, tracking_send)
        finally:
            route = scope.get("route")
            log.info("request", extra={"fields": {
                "method": scope["method"], "route": getattr(route, "name", "unrouted"), "status": status,
                "key_id": state.get("key_id"), "duration_ms": round(1000 * (time.monotonic() - started), 1)}})
            template = getattr(route, "path", None)
            if template is not None and template not in UNAUDITED:
                session_id = scope.get("path_params", {}).get("session_id")
                entry = AuditEntry(kind="request", key_id=state.get("key_id"), request_id=request_id,
                                   endpoint=f"{scope['method']} {template}"[:200], status=status,
                                   session_id=_safe_id(session_id), inputs=dict(state.get("inputs") or {}))
                await asyncio.shield(self.record(entry))


def _safe_id(value: object) -> str | None:
    """A session id from the path as given when it is a valid name (it is an attempt worth recording), else a
    marker: a path segment may be anything, and the log keeps no free text."""
    if value is None:
        return None
    return str(value) if name_problem(value) is None else "(invalid)"


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop what remains of a request body, at most ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _refuse(send: Send, request_id: str, limit: int, *, openai: bool = False) -> None:
    import json

    message = f"the request body is over the limit of {limit} bytes"
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": "payload_too_large"}} if openai else
                      {"error": {"code": "payload_too_large", "family": "configuration", "message": message},
                       "request_id": request_id}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", request_id.encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
