"""The request and response bodies of the HTTP service (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

MAX_QUESTION_CHARS: Final = 100_000  # the schema's bound; the service's setting (default 8000) is checked too


class Health(BaseModel):
    status: str
    version: str


class Readiness(BaseModel):
    ready: bool
    database: bool
    agent: bool
    turns_running: int


class SessionOut(BaseModel):
    id: str
    created_at: str


class SessionDetail(SessionOut):
    image_ids: list[str]
    messages: int = Field(description="messages in the conversation so far")
    unfinished: bool = Field(description="a turn stopped midway (the service was stopped): POST .../resume")


class SessionList(BaseModel):
    sessions: list[SessionOut]


class ImageOut(BaseModel):
    image_id: str
    kind: str
    media_type: str
    summary: dict[str, Any] = Field(description="modality, format, shape, spacing: never header values")
    deidentified: bool


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approved: bool


class AnswerOut(BaseModel):
    session_id: str
    text: str | None
    model: str | None = Field(description="the planner's model id as its server reported it")
    tool_calls: list[dict[str, Any]]
    pending_approval: dict[str, Any] | None = Field(description="a tool call waiting for POST .../approval")


class HistoryOut(BaseModel):
    messages: list[dict[str, Any]]
    total: int


class ExpertOut(BaseModel):
    name: str
    summary: str
    modalities: list[str]
    requires_approval: bool
    ready: bool


class ExpertList(BaseModel):
    experts: list[ExpertOut]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    family: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail
    request_id: str | None


ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorOut, "description": description} for status, description in (
        (401, "no valid API key"), (404, "no such session or artifact for this key"), (422, "invalid request"),
        (429, "rate limited: see Retry-After"))
}
