"""The one invocation path of tools: every call (an agent-loop step, a pipeline step, a dialogue hint)
goes through :func:`invoke`, which checks, runs, times the call and returns one :class:`ToolCallRecord`
that events, sessions and the study store keep as is.

Output models may declare what generic code (study columns, ``for_each``, dialogue hints) reads from
them through :class:`LabelProbabilities`, so no caller parses one tool's fields."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medagent.errors import ErrorFamily, MedagentError
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext

__all__ = ["ErrorRecord", "Invocation", "LabelProbabilities", "ToolCallRecord", "invoke", "label_probabilities",
           "parse_arguments"]

_MAX_RAW_CHARS = 200  # arguments that are no JSON object are kept as this much text
_MAX_CALL_ID = 200  # a pipeline's '<step>:<finding>' names a finding of any length


def _json_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value))


class ErrorRecord(BaseModel):
    """A typed error as :meth:`medagent.errors.MedagentError.to_dict` describes it, with JSON-scalar details."""

    model_config = ConfigDict(extra="forbid")

    code: str
    family: ErrorFamily
    message: str
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorRecord:
        if isinstance(error, MedagentError):
            return cls(code=error.code, family=error.family, message=error.message,
                       details={k: v for k, v in error.details.items() if _json_scalar(v)})
        # an unexpected exception is a bug or a crash of the machinery: name its type only, its text may quote inputs
        return cls(code="unexpected_error", family="infrastructure", message=type(error).__name__)

    @classmethod
    def from_dict(cls, error: Mapping[str, Any]) -> ErrorRecord:
        """Either shape: a dump of this model, or the flat :meth:`MedagentError.to_dict` (older checkpoints)."""
        details = error.get("details")
        if not isinstance(details, Mapping):
            details = {k: v for k, v in error.items() if k not in ("code", "family", "message")}
        family = error.get("family")
        return cls(code=str(error.get("code", "error")), message=str(error.get("message", "")),
                   family=family if family in ("retry", "tool_failure", "configuration") else "infrastructure",
                   details={k: v for k, v in details.items() if _json_scalar(v)})


class ToolCallRecord(BaseModel):
    """One tool call: who asked (``call_id``: the planner's call id, a pipeline step, a hint), what was sent,
    what came back or the typed error, and how long it took."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    call_id: str | None = Field(default=None, max_length=_MAX_CALL_ID)
    arguments: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    ok: bool
    error: ErrorRecord | None = None
    duration_s: float | None = Field(default=None, ge=0)
    started_at: datetime | None = None

    @model_validator(mode="after")
    def _error_matches_ok(self) -> ToolCallRecord:
        if self.ok and self.error is not None:
            raise ValueError("a successful tool call carries no error")
        return self

    @property
    def error_code(self) -> str | None:
        return self.error.code if self.error else None

    def as_json(self) -> dict[str, Any]:
        """This record as JSON data (events, checkpoints, answers); ``output`` is JSON data already, not walked
        again (an expert's output can be large)."""
        data = self.model_dump(mode="json", exclude={"output"})
        data["output"] = self.output
        return data


@runtime_checkable
class LabelProbabilities(Protocol):
    """An output that scores labels (a classifier's findings): ``{label: probability}``, most probable first
    where the tool ranks them. Study columns (``prob.<label>``), ``for_each`` and dialogue hints read this."""

    def label_probabilities(self) -> dict[str, float]: ...


def declares_label_probabilities(output_model: type[BaseModel]) -> bool:
    return callable(getattr(output_model, "label_probabilities", None))


def label_probabilities(registry: ToolRegistry, record: ToolCallRecord) -> dict[str, float] | None:
    """The label probabilities a stored record's output declares (its tool's output model says how), or None."""
    if not record.ok or record.tool not in registry:
        return None
    model = registry.get(record.tool).output_model
    if not declares_label_probabilities(model):
        return None
    return dict(model.model_validate(record.output).label_probabilities())


@dataclass(frozen=True, slots=True)
class Invocation:
    """A call's record, and its output model while it is in memory (None when the call failed)."""

    record: ToolCallRecord
    value: BaseModel | None = None

    def probabilities(self) -> dict[str, float] | None:
        return self.value.label_probabilities() if isinstance(self.value, LabelProbabilities) else None


def parse_arguments(arguments: str | Mapping[str, Any]) -> dict[str, Any] | None:
    """Planner arguments as a JSON object, or None when they are none (the registry then says why)."""
    if not isinstance(arguments, str):
        return dict(arguments) if isinstance(arguments, Mapping) else None
    try:
        parsed = json.loads(arguments or "{}")
    except (ValueError, RecursionError):  # RecursionError: nested past the parser
        return None
    return parsed if isinstance(parsed, dict) else None


def _kept(arguments: str | Mapping[str, Any], parsed: dict[str, Any] | None) -> dict[str, Any]:
    if parsed is not None:
        return parsed
    text = arguments if isinstance(arguments, str) else repr(arguments)
    return {"raw": text[:_MAX_RAW_CHARS], "characters": len(text)}


async def invoke(registry: ToolRegistry, name: str, arguments: str | Mapping[str, Any], context: ToolContext, *,
                 call_id: str | None = None, offered: Collection[str] | None = None, approved: bool = False,
                 refused: ErrorRecord | None = None) -> Invocation:
    """Run one call through the registry (offered, validated, approved, under the tool's policy) and record it.

    ``refused``: the call was refused before it could run (by a gate or a human); it is recorded, not run.
    A :class:`MedagentError` becomes the record's typed error; anything else propagates (a bug)."""
    parsed = parse_arguments(arguments)
    kept, started_at = _kept(arguments, parsed), datetime.now(UTC)
    call_id = None if call_id is None else call_id[:_MAX_CALL_ID]
    if refused is not None:
        return Invocation(_record(name, call_id, kept, started_at, None, refused, 0.0))
    started = time.perf_counter()
    try:
        sent = parsed if parsed is not None else arguments if isinstance(arguments, str) else "[]"  # "[]": no object
        value = await registry.call(name, sent, context, approved=approved, offered=offered)
    except MedagentError as exc:
        return Invocation(_record(name, call_id, kept, started_at, None, ErrorRecord.from_exception(exc),
                                  round(time.perf_counter() - started, 4)))
    duration = round(time.perf_counter() - started, 4)
    return Invocation(_record(name, call_id, kept, started_at, value.model_dump(mode="json"), None, duration), value)


def _record(tool: str, call_id: str | None, arguments: dict[str, Any], started_at: datetime, output: Any,
            error: ErrorRecord | None, duration_s: float) -> ToolCallRecord:
    # validated (pydantic-core's validator is faster than model_construct's Python loop); output is JSON already
    return ToolCallRecord(tool=tool, call_id=call_id, arguments=arguments, output=output, ok=error is None,
                          error=error, duration_s=duration_s, started_at=started_at)
