"""medagent as an OpenAI model: ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed or not).

The model, ``medagent``, is the service's agent: its planner and its experts. A harness that speaks OpenAI
(an evaluator, a simulated clinic's doctor, a chat UI) uses it by pointing its base URL at the service, with
one of the service's API keys as its OpenAI key; the same rate limits, body bounds and audit records apply.

Each completion is stateless, as OpenAI's are: a new session owned by the key, the conversation's images
attached (de-identified, as uploads are), one question asked (see :mod:`medagent.service.openai_inputs`).
The reply's content is the agent's answer; its ``medagent`` field holds the session id, the images attached
and the tool trace with each expert's provenance. The session is kept, owned by the key, so a client may
follow up through the native API (``/v1/sessions/{id}``...), unless the service's ``chat_keep_sessions`` or
the request's ``medagent.keep_session`` say otherwise. Tools that need a human's approval cannot be approved
here: each such call is rejected, the agent answers without it, and ``rejected_approvals`` names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from medagent.api import Event, Session
from medagent.errors import ConfigurationError
from medagent.logs import SESSION_ID
from medagent.service.audit import AuditEntry, sha256_hex
from medagent.service.auth import Caller, service_of
from medagent.service.openai_errors import ModelNotFound, OpenAIRoute, error_type
from medagent.service.openai_inputs import decode_image, image_urls, question
from medagent.service.openai_schemas import (
    MODEL_ID,
    OPENAI_ERRORS,
    AssistantMessage,
    ChatCompletion,
    ChatRequest,
    Choice,
    Extension,
    MedagentInfo,
    ModelList,
    ModelOut,
    Provenance,
    ToolTrace,
)
from medagent.service.problems import InvalidRequest, ServiceBusy, TurnFailed, status_for
from medagent.tools.registry import ToolRegistry

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
CREATED: Final = int(time.time())
MAX_REJECTED_APPROVALS: Final = 8
MAX_SUMMARY_CHARS: Final = 500


class ApprovalRequired(ConfigurationError):
    """The agent kept asking for approvals the facade cannot give; the session waits for one (native API)."""

    code = "approval_required"


def _model() -> ModelOut:
    return ModelOut(id=MODEL_ID, created=CREATED, owned_by="medagent")


@router.get("/models", response_model=ModelList, responses=OPENAI_ERRORS)
async def list_models(_caller: Caller) -> ModelList:
    """The one model this service serves: ``medagent``, its planner with its experts."""
    return ModelList(data=[_model()])


@router.get("/models/{model_id}", response_model=ModelOut, responses=OPENAI_ERRORS)
async def get_model(_caller: Caller, model_id: str) -> ModelOut:
    if model_id != MODEL_ID:
        raise ModelNotFound("no such model: GET /v1/models lists the one this service serves")
    return _model()


async def unattended(session: Session, asked: str, limit: int = MAX_REJECTED_APPROVALS) -> AsyncIterator[Event]:
    """The turn's events, each approval request answered with a rejection (no human is there to decide)."""
    events, rejected = session.events(asked), 0
    while True:
        paused = False
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                paused = event.kind == "approval_requested"
                yield event
        if not paused:
            return
        if rejected >= limit:
            yield Event(kind="error", data=ApprovalRequired(
                f"the agent asked for {rejected + 1} approvals; approve in the session (native API) instead").to_dict())
            return
        rejected += 1
        events = session.resume(False)


class Outcome:
    """What a turn's events amount to: the answer, the tool trace, the approvals rejected, or an error."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.text = ""
        self.model: str | None = None
        self.calls: list[ToolTrace] = []
        self.rejected: list[str] = []
        self.error: dict[str, Any] | None = None

    def observe(self, event: Event) -> str:
        """Note ``event``; the token text it carries (the answer as it streams), else ``""``."""
        data = event.data
        if event.kind == "token":
            return str(data.get("text") or "")
        if event.kind == "tool_finished":
            self.calls.append(self._trace(data))
        elif event.kind == "approval_requested":
            self.rejected.append(str(data.get("tool"))[:200])
        elif event.kind == "answer":
            self.text, self.model = str(data.get("text") or ""), data.get("model")
        elif event.kind == "error":
            self.error = dict(data)
        return ""

    def _trace(self, data: dict[str, Any]) -> ToolTrace:
        name, output = str(data.get("tool")), data.get("output")
        summary, provenance = "", None
        if isinstance(output, dict) and isinstance(output.get("provenance"), dict):
            provenance = Provenance.model_validate({key: output["provenance"].get(key) for key in
                                                    ("expert", "model_id", "weights_sha256")}
                                                   | {"untrained": bool(output["provenance"].get("untrained"))})
        if data.get("ok") and name in self.registry:
            with contextlib.suppress(ValidationError, TypeError, ValueError):
                result = self.registry.get(name).output_model.model_validate(output)
                summarise = getattr(result, "summary_text", None)
                summary = str(summarise())[:MAX_SUMMARY_CHARS] if callable(summarise) else ""
        error = data.get("error")
        return ToolTrace(tool=name, call_id=data.get("call_id"), ok=bool(data.get("ok")), summary=summary,
                         error={"code": error.get("code"), "message": error.get("message")}
                         if isinstance(error, dict) else None, provenance=provenance, output=output)

    def info(self, session_id: str, kept: bool, image_ids: list[str]) -> MedagentInfo:
        return MedagentInfo(session_id=session_id, session_kept=kept, planner_model=self.model, image_ids=image_ids,
                            tool_calls=self.calls, rejected_approvals=self.rejected)


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@router.post("/chat/completions", response_model=ChatCompletion, responses={
    **OPENAI_ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                           "description": "a ChatCompletion, or with stream: chat.completion.chunk events"}})
async def chat_completions(request: Request, caller: Caller, body: ChatRequest) -> Response:
    """Ask medagent, OpenAI-style: the conversation's last user message, its images attached."""
    service = service_of(request)
    settings = service.settings
    if body.model != MODEL_ID:
        raise ModelNotFound("no such model: GET /v1/models lists the one this service serves")
    if body.n not in (None, 1):
        raise InvalidRequest("medagent answers once per request: n must be 1")
    if body.tools:
        raise InvalidRequest("medagent calls its own experts: a request's own tools are not supported")
    asked = question(body.messages, settings.max_question_chars)
    urls = image_urls(body.messages, settings.max_images_per_session)
    images = await asyncio.to_thread(lambda: [decode_image(url, settings.max_upload_bytes) for url in urls])
    if service.turns.running >= service.turns.limit:  # before a session is made for nothing
        raise ServiceBusy(f"{service.turns.limit} turns are running; retry shortly", retry_after_s=2)
    request.state.inputs["question_sha256"] = sha256_hex(asked)
    for number, (data, _media_type) in enumerate(images[:8], start=1):
        request.state.inputs[f"image_{number}_sha256"] = sha256_hex(data)
    extension = body.medagent or Extension()
    keep = settings.chat_keep_sessions if extension.keep_session is None else extension.keep_session

    created = await service.sessions.create(caller.key_id)
    SESSION_ID.set(created.id)
    image_ids: list[str] = []
    try:
        session = await service.sessions.open(caller.key_id, created.id)
        for data, media_type in images:
            modality = None if media_type == "application/dicom" or extension.modality is None \
                else extension.modality.value
            artifact = await session.attach_bytes(data, modality)
            await service.sessions.add_pending(created.id, artifact.id)
            image_ids.append(artifact.id)
        audit = AuditEntry(key_id=caller.key_id, request_id=request.state.request_id,
                           endpoint="POST /v1/chat/completions", session_id=created.id,
                           inputs=dict(request.state.inputs))
        turn = service.turns.start(unattended(session, asked), audit)
        await service.sessions.clear_pending(created.id)
    except BaseException:
        with contextlib.suppress(Exception):  # an image refused, the service busy: no session is left behind
            await service.sessions.delete(caller.key_id, created.id)
        raise

    outcome = Outcome(service.agent.toolbox.registry)

    async def finish() -> MedagentInfo:
        if not keep:
            await service.sessions.delete(caller.key_id, created.id)
        return outcome.info(created.id, keep, image_ids)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(turn.events_with_keepalive(settings.sse_keepalive_s), outcome, finish, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    async for event in turn.events():
        outcome.observe(event)
    info = await finish()
    if outcome.error is not None:
        raise TurnFailed(outcome.error)
    reply = ChatCompletion(id=_completion_id(), created=int(time.time()), model=MODEL_ID, medagent=info,
                           choices=[Choice(message=AssistantMessage(content=outcome.text))])
    return JSONResponse(reply.model_dump(mode="json"))


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False, default=str)}\n\n".encode()


async def _chunks(events: AsyncIterator[Event | None], outcome: Outcome, finish: Callable[[], Awaitable[MedagentInfo]],
                  include_usage: bool) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events: the answer's tokens as they come, then the finish with the ``medagent``
    field, usage if asked for, and ``[DONE]``; a failed turn ends in an OpenAI-shaped ``error`` event."""
    base = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL_ID}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return _data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                           "logprobs": None}], **extra})

    yield chunk({"role": "assistant", "content": ""})
    streamed = ""
    async for event in events:
        if event is None:
            yield b": keepalive\n\n"
            continue
        token = outcome.observe(event)
        if token:
            streamed += token
            yield chunk({"content": token})
    info = await finish()
    if outcome.error is not None:
        code, family = str(outcome.error.get("code", "internal")), str(outcome.error.get("family", "infrastructure"))
        yield _data({"error": {"message": str(outcome.error.get("message", "")), "type":
                               error_type(status_for(code, family)), "param": None, "code": code}})
        return
    text = outcome.text
    if streamed.strip() != text.strip():  # tokens that were not all of the answer: the rest, or the answer itself
        yield chunk({"content": text[len(streamed):] if text.startswith(streamed) else f"\n\n{text}"})
    yield chunk({}, "stop", medagent=info.model_dump(mode="json"))
    if include_usage:
        yield _data({**base, "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
    yield b"data: [DONE]\n\n"
