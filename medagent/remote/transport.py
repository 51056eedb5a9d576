"""HTTP to an expert service, every way it can fail mapped to a typed error in bounded time: connect and read
timeouts, an overall deadline per request, and a cap on what is read back."""

from __future__ import annotations

import asyncio
import json
from typing import Any, NoReturn

import httpx
from pydantic import ValidationError

from medagent import errors
from medagent.errors import (
    MedagentError,
    RemoteExpertCrashed,
    RemoteExpertError,
    RemoteExpertTimeout,
    RemoteExpertUnavailable,
    RemoteProtocolMismatch,
    RemoteResponseInvalid,
)
from medagent.remote.protocol import (
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACT_METADATA_BYTES,
    MAX_RESPONSE_BYTES,
    PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    ArtifactPayload,
    BatchResponse,
    ErrorResponse,
    WireError,
)

MAX_ARTIFACT_RESPONSE_BYTES = (MAX_ARTIFACT_BYTES * 4) // 3 + 2 * MAX_ARTIFACT_METADATA_BYTES + 4096
CONNECT_TIMEOUT_S = 5.0  # a service that does not accept a connection in this long is down, whatever the card says
_BY_CODE: dict[str, type[MedagentError]] = {}
for _name in errors.__all__:
    _class = getattr(errors, _name)
    if issubclass(_class, MedagentError) and "code" in vars(_class):
        _BY_CODE.setdefault(_class.code, _class)
_FAMILY_BASE: dict[str, type[MedagentError]] = {
    "retry": errors.ModelRetry, "tool_failure": errors.ToolFailure, "configuration": errors.ConfigurationError,
    "infrastructure": RemoteExpertError,
}


def typed(error: WireError, where: str) -> MedagentError:
    """The service's typed error as the same class here (by its stable code), else its family's base class."""
    found = _BY_CODE.get(error.code)
    kind = found if found is not None and found.family == error.family else _FAMILY_BASE[error.family]
    message = "".join(ch if ch.isprintable() else " " for ch in error.message)
    return kind(message, remote=where, remote_code=error.code)


class Endpoint:
    """One expert service: its base URL, where it is (``host:port``, for provenance) and its time bounds."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parsed = httpx.URL(url)
        self.base = str(parsed).rstrip("/")
        self.where = f"{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
        self.timeout_s = timeout_s
        self.timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))

    def check_protocol(self, protocol: object) -> None:
        if protocol != PROTOCOL_VERSION:
            raise RemoteProtocolMismatch(f"the expert service at {self.where} speaks protocol {protocol}; this "
                                         f"medagent speaks {PROTOCOL_VERSION}", remote=self.where)

    def get_json(self, path: str, limit: int) -> Any:
        """A GET answered with JSON (building tools: synchronous, bounded like every call)."""
        try:
            with httpx.Client(timeout=self.timeout) as client, client.stream("GET", self.base + path) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise RemoteResponseInvalid(f"the expert service at {self.where} sent over {limit} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            self._raise_transport(exc)
        if status != 200:
            self._raise_status(status, bytes(body))
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise RemoteResponseInvalid(f"the expert service at {self.where} answered with no JSON") from None

    async def post_batch(self, tool: str, body: bytes, items: int) -> BatchResponse:
        """One batch request; the typed error of whatever went wrong (the whole request is bounded by the card's
        timeout, however slowly a server drips its answer)."""
        headers = {"content-type": "application/json", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            status, received = await self._read(client, "POST", f"{PREFIX}/tools/{tool}/batch", MAX_RESPONSE_BYTES,
                                                content=body, headers=headers)
        if status != 200:
            self._raise_status(status, received)
        try:
            answer = BatchResponse.model_validate_json(received)
        except ValidationError:
            raise RemoteResponseInvalid(f"the expert service at {self.where} answered with no valid batch "
                                        "response") from None
        self.check_protocol(answer.protocol)
        if len(answer.items) != items:
            raise RemoteResponseInvalid(f"the expert service at {self.where} answered {len(answer.items)} results "
                                        f"for {items} calls")
        return answer

    async def get_artifacts(self, artifact_ids: list[str]) -> list[ArtifactPayload]:
        """What a call wrote on the service, one request each over one connection, each read under its cap."""
        found = []
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for artifact_id in artifact_ids:
                status, received = await self._read(client, "GET", f"{PREFIX}/artifacts/{artifact_id}",
                                                    MAX_ARTIFACT_RESPONSE_BYTES)
                if status == 404:  # expired or restarted: the call's result cannot be completed
                    raise RemoteExpertUnavailable(f"the expert service at {self.where} no longer keeps what the "
                                                  "call wrote", remote=self.where, status=status)
                if status != 200:
                    self._raise_status(status, received)
                try:
                    payload = ArtifactPayload.model_validate_json(received)
                except ValidationError:
                    raise RemoteResponseInvalid(f"the expert service at {self.where} sent an invalid "
                                                "artifact") from None
                if payload.id != artifact_id:
                    raise RemoteResponseInvalid(f"the expert service at {self.where} sent another artifact than "
                                                "the one asked for")
                found.append(payload)
        return found

    async def _read(self, client: httpx.AsyncClient, method: str, path: str, limit: int,
                    **request: Any) -> tuple[int, bytes]:
        """Status and body of one request, the body read under ``limit`` and the whole within the timeout."""
        try:
            async with asyncio.timeout(self.timeout_s), client.stream(method, self.base + path, **request) as response:
                received = bytearray()
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) > limit:
                        raise RemoteResponseInvalid(f"the expert service at {self.where} sent over {limit} bytes")
                return response.status_code, bytes(received)
        except TimeoutError:
            raise RemoteExpertTimeout(f"the expert service at {self.where} did not answer within {self.timeout_s:g} s",
                                      remote=self.where) from None
        except httpx.HTTPError as exc:
            self._raise_transport(exc)

    def _raise_transport(self, exc: httpx.HTTPError) -> NoReturn:
        where = self.where
        if isinstance(exc, httpx.TimeoutException):
            raise RemoteExpertTimeout(f"the expert service at {where} timed out ({type(exc).__name__})",
                                      remote=where) from None
        if isinstance(exc, httpx.ConnectError):
            raise RemoteExpertUnavailable(f"cannot reach the expert service at {where} (is it running?)",
                                          remote=where) from None
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            raise RemoteExpertCrashed(f"the connection to the expert service at {where} dropped mid-call",
                                      remote=where) from None
        raise RemoteExpertUnavailable(f"the expert service at {where} failed ({type(exc).__name__})",
                                      remote=where) from None

    def _raise_status(self, status: int, body: bytes) -> NoReturn:
        try:
            error = ErrorResponse.model_validate_json(body).error
        except ValidationError:
            error = None
        if status == 409 or (error is not None and error.code == RemoteProtocolMismatch.code):
            raise RemoteProtocolMismatch(f"the expert service at {self.where} speaks another protocol than "
                                         f"{PROTOCOL_VERSION}", remote=self.where)
        if status == 404:  # the service no longer hosts the tool (restarted with others): not the planner's mistake
            raise RemoteExpertUnavailable(f"the expert service at {self.where} does not host this tool now",
                                          remote=self.where, status=status)
        if error is not None and status < 500:
            raise typed(error, self.where)
        if status >= 500:
            raise RemoteExpertUnavailable(f"the expert service at {self.where} answered HTTP {status}",
                                          remote=self.where, status=status)
        raise RemoteResponseInvalid(f"the expert service at {self.where} answered HTTP {status} without a typed "
                                    "error", remote=self.where, status=status)
