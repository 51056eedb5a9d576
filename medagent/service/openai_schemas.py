"""The bodies of the OpenAI-compatible facade (``/v1/models``, ``/v1/chat/completions``) and its errors.

Requests take what OpenAI's clients send: text and ``image_url`` content parts, ``stream``; sampling
parameters (``temperature``, ``max_tokens``, ...) are accepted and ignored, since the planner samples as the
service configured it. ``medagent`` is an optional extension of the request (a modality for PNG/JPEG images,
whether to keep the session). Replies are ``chat.completion`` objects (or ``chat.completion.chunk`` events)
with one extension field, ``medagent``: the session, the images attached, the tool trace with provenance.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.imaging.record import Modality

MODEL_ID: Final = "medagent"
MAX_MESSAGES: Final = 500
MAX_PARTS: Final = 64
MAX_TEXT_CHARS: Final = 1_000_000  # one text part; the question the agent is asked is bounded by the service too


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields medagent has no use for


class TextPart(_Lenient):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


class ImageURL(_Lenient):
    url: str = Field(description="a data: URL (base64); the service fetches no URL")
    detail: str | None = Field(default=None, max_length=16)


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = Field(default=None)
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))

    def images(self) -> list[ImageURL]:
        if not isinstance(self.content, list):
            return []
        return [part.image_url for part in self.content if isinstance(part, ImagePart)]


class StreamOptions(_Lenient):
    include_usage: bool = False


class Extension(BaseModel):
    """``medagent`` in a request (``extra_body={"medagent": {...}}`` with OpenAI's Python client)."""

    model_config = ConfigDict(extra="forbid")

    modality: Modality | None = Field(default=None, description="the modality of the PNG/JPEG images (DICOM "
                                                                "carries its own)")
    keep_session: bool | None = Field(default=None, description="keep the session for the native API "
                                                                "(default: the service's chat_keep_sessions)")


class ChatRequest(_Lenient):
    model: str = Field(max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    medagent: Extension | None = None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class Provenance(BaseModel):
    expert: str | None = None
    model_id: str | None = None
    weights_sha256: str | None = None
    untrained: bool = False


class ToolTrace(BaseModel):
    tool: str
    call_id: str | None
    ok: bool
    summary: str = Field(description="the expert's own one-sentence summary of its result")
    error: dict[str, Any] | None = Field(description="code and message of a typed error")
    provenance: Provenance | None
    output: Any = Field(description="the tool's result as the native API returns it (artifact ids included)")


class MedagentInfo(BaseModel):
    """The extension field of a reply: what the agent did to answer."""

    session_id: str = Field(description="the session holding this conversation (native API, this key only)")
    session_kept: bool
    planner_model: str | None = Field(description="the planner's model id as its server reported it")
    image_ids: list[str]
    tool_calls: list[ToolTrace]
    rejected_approvals: list[str] = Field(description="tools that need a human's approval: the facade has no one "
                                                      "to ask, so each call was rejected and the agent answered "
                                                      "without it")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    """Zeros: a medagent turn may call the planner several times, and planners need not report tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage = Field(default_factory=Usage)
    medagent: MedagentInfo


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorOut(BaseModel):
    """OpenAI's error shape: OpenAI clients raise their own typed exceptions from it."""

    error: ErrorDetail


OPENAI_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorOut, "description": description} for status, description in (
        (400, "invalid request: an http(s) image URL, no user message last, a question too long"),
        (401, "no valid API key"), (404, "no such model"), (413, "the body or an image is too large"),
        (415, "not an image medagent reads"), (429, "rate limited: see Retry-After"))
}
