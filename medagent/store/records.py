"""Typed inputs and outputs of the study store, and its errors.

The runner hands :class:`CaseResult`, planner message dicts and the tool calls' own records
(:class:`~medagent.tools.invoke.ToolCallRecord`, kept as the invocation path made them) to
:meth:`StudyStore.record_case`; readers get :class:`RunRecord`, :class:`CaseRecord` and
:class:`StoredToolCall` back, never ORM rows.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medagent.errors import ConfigurationError
from medagent.tools.invoke import ErrorRecord, ToolCallRecord

CaseStatus = Literal["succeeded", "failed"]
RunStatus = Literal["running", "finished", "failed", "cancelled"]
ColumnValue = float | int | str | bool | None


class StoreError(ConfigurationError):
    code = "study_store"


class RunExists(StoreError):
    """``create_run`` with an id already taken: resume it instead, or pick a new id."""

    code = "run_exists"


class UnknownRun(StoreError):
    code = "unknown_run"


class ConfigChanged(StoreError):
    """A resume whose configuration hash differs from the run's (allowed only when forced)."""

    code = "config_changed"


class StoreUnavailable(StoreError):
    """The store cannot be opened: a database server that does not answer or refuses the login, an SQLite
    file that cannot be created or opened."""

    code = "store_unavailable"


class StoreSchemaMismatch(StoreError):
    code = "store_schema_mismatch"


class RunInProgress(StoreError):
    """Another live runner holds this run's lease (a second ``--resume`` of a run still computing)."""

    code = "run_in_progress"


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time the store writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


#: A typed error of a case or of a tool call: one model, defined with the tool call record it belongs to.
CaseError = ErrorRecord


class StoredToolCall(ToolCallRecord):
    run_id: str
    case_id: str
    repeat: int
    position: int


class CaseResult(BaseModel):
    """What the runner knows when a case ends. ``columns`` are flat per-case values the reports
    read (``truth.<finding>``, ``prob.<finding>``, ``pred.<finding>``, ``subgroup.<name>``)."""

    model_config = ConfigDict(extra="forbid")

    status: CaseStatus
    answer: str | None = None
    result: dict[str, Any] | None = None
    error: CaseError | None = None
    columns: dict[str, ColumnValue] = Field(default_factory=dict)
    seed: int | None = None
    model_id: str | None = Field(default=None, description="the model id as the planner server reported it")
    expert_weights: dict[str, str | None] = Field(default_factory=dict, description="expert name -> weights sha256")
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    latency_s: float | None = Field(default=None, ge=0)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @field_validator("columns")
    @classmethod
    def _finite(cls, columns: dict[str, ColumnValue]) -> dict[str, ColumnValue]:
        # NaN is not JSON (PostgreSQL refuses it): "unknown" is stored as null on every backend
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in columns.items()}

    @model_validator(mode="after")
    def _error_matches_status(self) -> CaseResult:
        if self.status == "failed" and self.error is None:
            raise ValueError("a failed case must record its typed error")
        if self.status == "succeeded" and self.error is not None:
            raise ValueError("a succeeded case carries no error")
        return self


class CaseRecord(CaseResult):
    """A stored case with its key, attempt count and full provenance."""

    run_id: str
    case_id: str
    repeat: int
    attempts: int
    config_hash: str
    medagent_version: str
    git_sha: str | None
    recorded_at: datetime | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.case_id, self.repeat)


class CaseWrite(BaseModel):
    """The outcome of :meth:`StudyStore.record_case`: the stored case, and whether this call wrote it."""

    record: CaseRecord
    written: bool


class RunRecord(BaseModel):
    run_id: str
    study: str
    config: dict[str, Any]
    config_hash: str
    medagent_version: str
    git_sha: str | None
    status: RunStatus
    created_at: datetime | None
    finished_at: datetime | None


class MetricValue(BaseModel):
    """A named number of the run (``case_id`` None) or of one case."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    value: float | None
    case_id: str | None = None
    repeat: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        return None if value is not None and not math.isfinite(value) else value

    @model_validator(mode="after")
    def _scope_complete(self) -> MetricValue:
        if (self.case_id is None) != (self.repeat is None):
            raise ValueError("a case metric names both case_id and repeat; a run metric names neither")
        return self

    @property
    def scope(self) -> str:
        return "run" if self.case_id is None else f"case:{self.repeat}:{self.case_id}"
