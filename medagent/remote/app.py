"""The HTTP face of an :class:`ExpertService` (FastAPI): thin routes over the service's methods, bodies read
under a cap, every refusal a typed error as JSON. Imported only where experts are served (the ``serve`` extra)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from medagent.errors import MedagentError, RemoteExpertError, RemoteProtocolMismatch, UnknownArtifact, UnknownTool
from medagent.remote.protocol import (
    MAX_REQUEST_BYTES,
    PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    BatchRequest,
    ErrorResponse,
)
from medagent.remote.service import ExpertService, wire_error


def create_app(service: ExpertService) -> FastAPI:
    """The HTTP face of ``service`` (FastAPI): thin routes, bounded bodies, typed errors as JSON."""
    app = FastAPI(title="medagent expert service", version=str(PROTOCOL_VERSION), docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service

    def reply(model: Any, status: int = 200) -> Response:
        return Response(model.model_dump_json(), status_code=status, media_type="application/json")

    def refuse(status: int, error: MedagentError) -> Response:
        return reply(ErrorResponse(protocol=PROTOCOL_VERSION, error=wire_error(error)), status)

    @app.get(f"{PREFIX}/health")
    async def health() -> Response:
        return reply(service.health())

    @app.get(f"{PREFIX}/ready")
    async def ready() -> Response:
        readiness = service.readiness()
        return reply(readiness, 200 if readiness.ready else 503)

    @app.get(f"{PREFIX}/tools")
    async def tools() -> Response:
        return reply(service.describe())

    @app.get(f"{PREFIX}/artifacts/{{artifact_id}}")
    async def artifact(artifact_id: str) -> Response:
        try:
            return reply(await service.artifact(artifact_id))
        except UnknownArtifact as exc:
            return refuse(404, exc)

    @app.post(f"{PREFIX}/tools/{{name}}/batch")
    async def batch(name: str, request: Request) -> Response:
        spoken = request.headers.get(PROTOCOL_HEADER)
        if spoken != str(PROTOCOL_VERSION):  # before the body: another version's body may not even parse
            return refuse(409, RemoteProtocolMismatch(f"this service speaks protocol {PROTOCOL_VERSION}, the request "
                                                      f"{(spoken or 'none')[:8]}", expected=PROTOCOL_VERSION))
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_REQUEST_BYTES):
            return refuse(413, RemoteExpertError(f"a request may carry at most {MAX_REQUEST_BYTES} bytes"))
        async with service.inflight:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_REQUEST_BYTES:
                    return refuse(413, RemoteExpertError(f"a request may carry at most {MAX_REQUEST_BYTES} bytes"))
            try:
                parsed = BatchRequest.model_validate_json(bytes(body))
            except ValidationError as exc:
                del body
                return refuse(400, RemoteExpertError(f"not a batch request of protocol {PROTOCOL_VERSION} "
                                                     f"({exc.error_count()} problem(s))"))
            del body
            try:
                return reply(await service.predict(name, parsed))
            except RemoteProtocolMismatch as exc:
                return refuse(409, exc)
            except UnknownTool as exc:
                return refuse(404, exc)

    return app
