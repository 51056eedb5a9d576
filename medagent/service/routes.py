"""The routes of ``medagent serve``: sessions, uploads, questions (JSON or Server-Sent Events), approvals,
artifacts, experts, health. Thin: each resolves the caller's session (``404`` unless the key owns it) and
calls the library."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from medagent import __version__
from medagent.api import Session
from medagent.imaging.record import Modality
from medagent.logs import SESSION_ID
from medagent.service.audit import AuditEntry, sha256_hex
from medagent.service.auth import Caller, service_of
from medagent.service.problems import (
    InvalidRequest,
    NothingToResume,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from medagent.service.schemas import (
    ERRORS,
    AnswerOut,
    Decision,
    ExpertList,
    ExpertOut,
    Health,
    HistoryOut,
    ImageOut,
    Question,
    Readiness,
    SessionDetail,
    SessionList,
    SessionOut,
)
from medagent.service.sse import event_stream
from medagent.service.turns import Turn

router = APIRouter(prefix="/v1")
IMAGE_TYPES: Final = frozenset({"application/dicom", "image/png", "image/jpeg", "application/octet-stream",
                                "application/gzip", "application/x-nifti"})
_BINARY: Final = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY: Final = {"requestBody": {"required": True, "content": {
    **{media_type: _BINARY for media_type in sorted(IMAGE_TYPES)},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}}}}}
SessionPath = Annotated[str, PathParam(description="a session id from POST /v1/sessions")]


async def _session(request: Request, caller: Caller, session_id: str) -> Session:
    return await service_of(request).sessions.open(caller.key_id, session_id)


def _audit(request: Request, session_id: str | None) -> AuditEntry:
    route = getattr(request.scope.get("route"), "path", "")
    return AuditEntry(key_id=request.state.key_id, request_id=request.state.request_id,
                      endpoint=f"{request.method} {route}"[:200], session_id=session_id,
                      inputs=dict(request.state.inputs))


def _start(request: Request, session_id: str, events: Any) -> Turn:
    return service_of(request).turns.start(events, _audit(request, session_id))


@router.get("/health", response_model=Health, tags=["service"])
async def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get("/ready", response_model=Readiness, tags=["service"], responses={503: {"model": Readiness}})
async def ready(request: Request) -> JSONResponse:
    readiness = await service_of(request).readiness()
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


@router.get("/experts", response_model=ExpertList, tags=["service"], responses=ERRORS)
async def experts(request: Request, _caller: Caller) -> ExpertList:
    tools = service_of(request).agent.toolbox.registry.tools()
    return ExpertList(experts=[ExpertOut(name=tool.name, summary=tool.card.summary,
                                         modalities=[m.value for m in tool.card.modalities or []],
                                         requires_approval=tool.policy.requires_approval, ready=bool(tool.ready()))
                               for tool in tools])


@router.post("/sessions", response_model=SessionOut, status_code=201, tags=["sessions"], responses=ERRORS)
async def create_session(request: Request, caller: Caller) -> SessionOut:
    created = await service_of(request).sessions.create(caller.key_id)
    SESSION_ID.set(created.id)
    return SessionOut(id=created.id, created_at=created.created_at)


@router.get("/sessions", response_model=SessionList, tags=["sessions"], responses=ERRORS)
async def list_sessions(request: Request, caller: Caller, limit: Annotated[int, Query(ge=1, le=100)] = 50,
                        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> SessionList:
    found = await service_of(request).sessions.owned(caller.key_id, limit=limit, offset=offset)
    return SessionList(sessions=[SessionOut(id=item.id, created_at=item.created_at) for item in found])


@router.get("/sessions/{session_id}", response_model=SessionDetail, tags=["sessions"], responses=ERRORS)
async def get_session(request: Request, caller: Caller, session_id: SessionPath) -> SessionDetail:
    session = await _session(request, caller, session_id)
    info = await service_of(request).sessions.info(caller.key_id, session_id)
    return SessionDetail(id=info.id, created_at=info.created_at, image_ids=await session.image_ids(),
                         messages=len(await session.history()), unfinished=await session.unfinished())


@router.delete("/sessions/{session_id}", status_code=204, tags=["sessions"], responses=ERRORS)
async def delete_session(request: Request, caller: Caller, session_id: SessionPath) -> Response:
    await service_of(request).sessions.delete(caller.key_id, session_id)
    return Response(status_code=204)


@router.get("/sessions/{session_id}/messages", response_model=HistoryOut, tags=["sessions"], responses=ERRORS)
async def history(request: Request, caller: Caller, session_id: SessionPath,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> HistoryOut:
    messages = await (await _session(request, caller, session_id)).history()
    return HistoryOut(messages=[dict(message) for message in messages[offset:offset + limit]], total=len(messages))


@router.post("/sessions/{session_id}/images", response_model=ImageOut, status_code=201, tags=["images"],
             responses={**ERRORS, 409: ERRORS[404] | {"description": "too many images"},
                        413: ERRORS[404] | {"description": "too large"}, 415: ERRORS[404] | {"description": "not an "
                                                                                    "image medagent reads"}},
             openapi_extra=UPLOAD_BODY)
async def upload_image(request: Request, caller: Caller, session_id: SessionPath,
                       modality: Annotated[Modality | None, Query(description="declare the modality of a PNG, JPEG "
                                                                             "or NIfTI image")] = None) -> ImageOut:
    """Upload one image (DICOM, PNG, JPEG, NIfTI) as the raw body or as the multipart part ``file``; it is
    de-identified on arrival and offered with the next question."""
    service = service_of(request)
    session = await _session(request, caller, session_id)
    data = await _upload_bytes(request, service.settings.max_upload_bytes)
    request.state.inputs["image_sha256"] = sha256_hex(data)
    if len(await session.image_ids()) >= service.settings.max_images_per_session:
        raise TooManyImages(f"a session may hold {service.settings.max_images_per_session} images")
    artifact = await session.attach_bytes(data, modality.value if modality else None)
    await service.sessions.add_pending(session_id, artifact.id)
    return ImageOut(image_id=artifact.id, kind=artifact.kind.value, media_type=artifact.media_type,
                    summary=dict(artifact.metadata.get("summary", {})),
                    deidentified=bool(artifact.provenance.get("deidentified")))


async def _upload_bytes(request: Request, limit: int) -> bytes:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=1) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise InvalidRequest("a multipart upload needs one file part named 'file'")
            data = await part.read(limit + 1)
    elif media_type in IMAGE_TYPES:
        data = await request.body()
    else:
        raise UnsupportedMediaType(f"upload an image as one of {', '.join(sorted(IMAGE_TYPES))} or multipart/form-data")
    if len(data) > limit:
        raise PayloadTooLarge(f"an upload may carry at most {limit} bytes")
    if not data:
        raise InvalidRequest("the upload is empty")
    return data


async def _question(request: Request, caller: Caller, session_id: str, body: Question) -> Turn:
    service = service_of(request)
    if len(body.question) > service.settings.max_question_chars:
        raise InvalidRequest(f"a question may have at most {service.settings.max_question_chars} characters")
    session = await _session(request, caller, session_id)
    request.state.inputs["question_sha256"] = sha256_hex(body.question)
    turn = _start(request, session_id, session.events(body.question))
    await service.sessions.clear_pending(session_id)
    return turn


@router.post("/sessions/{session_id}/messages", response_model=AnswerOut, tags=["turns"], responses=ERRORS)
async def ask(request: Request, caller: Caller, session_id: SessionPath, body: Question) -> AnswerOut:
    """Ask a question about the session's images; the answer when the turn ends (or pauses for approval)."""
    turn = await _question(request, caller, session_id, body)
    return AnswerOut.model_validate(await turn.answer(session_id))


@router.post("/sessions/{session_id}/messages/stream", tags=["turns"], responses={
    **ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "the turn's typed events as Server-Sent Events"}},
             response_class=StreamingResponse)
async def ask_streaming(request: Request, caller: Caller, session_id: SessionPath, body: Question) -> StreamingResponse:
    """Ask a question; the turn's typed events (token, tool_started, tool_finished, approval_requested, answer,
    error) as Server-Sent Events, in order."""
    turn = await _question(request, caller, session_id, body)
    return event_stream(turn, service_of(request).settings.sse_keepalive_s)


async def _decide(request: Request, caller: Caller, session_id: str, body: Decision) -> Turn:
    session = await _session(request, caller, session_id)
    request.state.inputs["decision"] = "approved" if body.approved else "rejected"
    return _start(request, session_id, session.resume(body.approved))


@router.post("/sessions/{session_id}/approval", response_model=AnswerOut, tags=["turns"],
             responses={**ERRORS, 409: ERRORS[404] | {"description": "no tool call waits for approval"}})
async def approve(request: Request, caller: Caller, session_id: SessionPath, body: Decision) -> AnswerOut:
    """Approve or reject the tool call waiting for a human; the turn continues to its answer."""
    turn = await _decide(request, caller, session_id, body)
    return AnswerOut.model_validate(await turn.answer(session_id))


@router.post("/sessions/{session_id}/approval/stream", tags=["turns"], response_class=StreamingResponse,
             responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                        "description": "the rest of the turn as Server-Sent Events"}})
async def approve_streaming(request: Request, caller: Caller, session_id: SessionPath,
                            body: Decision) -> StreamingResponse:
    turn = await _decide(request, caller, session_id, body)
    return event_stream(turn, service_of(request).settings.sse_keepalive_s)


@router.post("/sessions/{session_id}/resume", response_model=AnswerOut, tags=["turns"],
             responses={**ERRORS, 409: ERRORS[404] | {"description": "no turn stopped midway"}})
async def resume(request: Request, caller: Caller, session_id: SessionPath) -> AnswerOut:
    """Complete a turn the service was stopped in the middle of (``unfinished`` in the session)."""
    session = await _session(request, caller, session_id)
    if not await session.unfinished():
        raise NothingToResume("no turn of this session stopped midway")
    turn = _start(request, session_id, session.proceed())
    return AnswerOut.model_validate(await turn.answer(session_id))


@router.get("/sessions/{session_id}/artifacts/{artifact_id}", tags=["artifacts"], responses={
    **ERRORS, 200: {"content": {"image/png": _BINARY, "application/octet-stream": _BINARY},
                    "description": "the artifact's bytes (overlays and masks are PNG)"}}, response_class=Response)
async def artifact(request: Request, caller: Caller, session_id: SessionPath, artifact_id: str) -> Response:
    """An image, mask or overlay of this session (one its uploads or tool calls produced)."""
    session = await _session(request, caller, session_id)
    found = await session.artifact(artifact_id[:64])
    data = await asyncio.to_thread(service_of(request).agent.toolbox.store.read_bytes, found.id)
    return Response(data, media_type=found.media_type, headers={
        "Content-Disposition": f'attachment; filename="{found.id}"', "X-Content-Type-Options": "nosniff",
        "X-Medagent-Artifact-Kind": found.kind.value, "Cache-Control": "private, no-store"})
