"""The SQL tables of the study store (sqlmodel), identical on SQLite and PostgreSQL.

Schema versioning: ``study_schema_version`` holds one row with the version the tables were
created at. :data:`SCHEMA_VERSION` is bumped whenever a table changes shape; a store whose
recorded version differs is refused on open (:class:`~medagent.store.records.StoreSchemaMismatch`)
rather than written with the wrong layout. A future migration step runs between reading the
recorded version and that check, then updates the row.

Every table carries ``run_id`` so a run can be exported or deleted without joins; child rows
also point at their case through ``case_pk`` (a foreign key) so a case and its messages and
tool calls are written, replaced and counted together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION: Final = 2  # 2: study_tool_calls.call_id (a version-1 store is migrated on open)


def _json_column(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _time_column(nullable: bool = True) -> Any:
    # timezone-aware on PostgreSQL; SQLite stores naive UTC, records.py re-attaches UTC on read
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class SchemaVersionRow(SQLModel, table=True):
    __tablename__ = "study_schema_version"

    id: int = Field(default=1, primary_key=True)
    version: int
    created_at: datetime | None = _time_column()


class RunRow(SQLModel, table=True):
    __tablename__ = "study_runs"

    run_id: str = Field(primary_key=True, max_length=200)
    study: str = Field(max_length=200)
    config: dict[str, Any] | None = _json_column()
    config_hash: str = Field(max_length=128)
    medagent_version: str = Field(max_length=64)
    git_sha: str | None = Field(default=None, max_length=64)
    status: str = Field(default="running", max_length=32)
    created_at: datetime | None = _time_column()
    finished_at: datetime | None = _time_column()


class CaseRow(SQLModel, table=True):
    """One terminal record per (run, case, repeat): ``succeeded`` or ``failed``."""

    __tablename__ = "study_cases"
    __table_args__ = (UniqueConstraint("run_id", "case_id", "repeat", name="uq_study_case_key"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="study_runs.run_id", index=True, max_length=200)
    case_id: str = Field(max_length=500)
    repeat: int = 0
    status: str = Field(max_length=32)
    answer: str | None = None
    result: dict[str, Any] | None = _json_column()
    error: dict[str, Any] | None = _json_column()
    error_code: str | None = Field(default=None, max_length=100)
    columns: dict[str, Any] | None = _json_column()
    # provenance
    seed: int | None = None
    model_id: str | None = Field(default=None, max_length=500)
    expert_weights: dict[str, Any] | None = _json_column()
    config_hash: str = Field(max_length=128)
    medagent_version: str = Field(max_length=64)
    git_sha: str | None = Field(default=None, max_length=64)
    # timings and usage
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    started_at: datetime | None = _time_column()
    finished_at: datetime | None = _time_column()
    recorded_at: datetime | None = _time_column()
    attempts: int = 1


def _case_fk() -> Any:
    return Field(sa_column=Column(Integer, ForeignKey("study_cases.id", ondelete="CASCADE"), nullable=False,
                                  index=True))


class MessageRow(SQLModel, table=True):
    """A planner message of one case, in conversation order (``position``)."""

    __tablename__ = "study_messages"
    __table_args__ = (UniqueConstraint("case_pk", "position", name="uq_study_message_position"),)

    id: int | None = Field(default=None, primary_key=True)
    case_pk: int = _case_fk()
    run_id: str = Field(index=True, max_length=200)
    position: int
    role: str = Field(max_length=32)
    message: dict[str, Any] | None = _json_column()


class ToolCallRow(SQLModel, table=True):
    __tablename__ = "study_tool_calls"
    __table_args__ = (UniqueConstraint("case_pk", "position", name="uq_study_tool_call_position"),)

    id: int | None = Field(default=None, primary_key=True)
    case_pk: int = _case_fk()
    run_id: str = Field(index=True, max_length=200)
    case_id: str = Field(max_length=500)
    repeat: int = 0
    position: int
    tool: str = Field(max_length=200)
    call_id: str | None = Field(default=None, max_length=200)
    arguments: dict[str, Any] | None = _json_column()
    output: Any = _json_column()
    ok: bool
    error: dict[str, Any] | None = _json_column()
    error_code: str | None = Field(default=None, max_length=100)
    duration_s: float | None = None
    started_at: datetime | None = _time_column()


class MetricRow(SQLModel, table=True):
    """A named value of a run (``case_id`` null) or of one case; ``scope`` makes the name unique per owner."""

    __tablename__ = "study_metrics"
    __table_args__ = (UniqueConstraint("run_id", "scope", "name", name="uq_study_metric"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="study_runs.run_id", index=True, max_length=200)
    # "run" or "case:<repeat>:<case_id>"; NULLs never collide in a UNIQUE constraint, a string does
    scope: str = Field(max_length=600)
    case_id: str | None = Field(default=None, max_length=500)
    repeat: int | None = None
    name: str = Field(max_length=200)
    value: float | None = None
    details: dict[str, Any] | None = _json_column()
    recorded_at: datetime | None = _time_column()


class RunLeaseRow(SQLModel, table=True):
    """Who is computing a run right now: one row per run while a runner holds it, refreshed until
    ``expires_at``; a second runner of the same run is refused (an added table: no version bump)."""

    __tablename__ = "study_run_leases"

    run_id: str = Field(foreign_key="study_runs.run_id", primary_key=True, max_length=200)
    owner: str = Field(max_length=200)  # host:pid:random of the holding process
    expires_at: datetime | None = _time_column(nullable=False)


# SQLAlchemy gives each table=True class its __table__ when the class is made; sqlmodel's metaclass does not declare it
STUDY_TABLES: Final = tuple(model.__table__ for model in  # type: ignore[union-attr]
                            (SchemaVersionRow, RunRow, CaseRow, MessageRow, ToolCallRow, MetricRow, RunLeaseRow))
