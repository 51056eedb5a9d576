"""StudyStore: every run, case, planner message, tool call and metric of a study, in SQL.

All methods are synchronous and thread-safe: each call checks a connection out of the
SQLAlchemy pool for its own transaction, so several threads may call one store at once.
The async study runner calls them through ``asyncio.to_thread`` to keep its loop free.

A case is keyed by ``(run_id, case_id, repeat)`` and is written with all its messages and
tool calls in one transaction, so a process killed at any moment leaves the whole case or
nothing of it. Writes are idempotent: recording a key that already exists changes nothing
and returns the stored case, unless ``retry=True`` and the stored case failed, in which case
the new result replaces it (and its messages and tool calls) and ``attempts`` grows by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Connection, Engine, Table, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from medagent.names import check_name
from medagent.redaction import redact, redact_text
from medagent.store import leases
from medagent.store.engine import (
    WRITE_OPTION,
    create_store_engine,
    ensure_schema,
    git_sha,
    medagent_version,
    resolve_url,
)
from medagent.store.leases import DEFAULT_LEASE_TTL_S
from medagent.store.records import (
    CaseRecord,
    CaseResult,
    CaseStatus,
    CaseWrite,
    ConfigChanged,
    MetricValue,
    RunExists,
    RunRecord,
    RunStatus,
    StoredToolCall,
    StoreError,
    StoreUnavailable,
    ToolCallRecord,
    UnknownRun,
    now,
)
from medagent.store.rows import case_record, case_values, metric_value, require_text, run_record, stored_tool_call
from medagent.store.tables import CaseRow, MessageRow, MetricRow, RunLeaseRow, RunRow, ToolCallRow

if TYPE_CHECKING:
    import pandas as pd

CaseKey = tuple[str, int]


@dataclass(frozen=True)
class CaseEntry:
    """One case for :meth:`StudyStore.record_cases`: what :meth:`StudyStore.record_case` takes for one."""

    case_id: str
    repeat: int
    result: CaseResult
    messages: Sequence[Mapping[str, Any]] = ()
    tool_calls: Sequence[ToolCallRecord] = field(default_factory=list)
    attempts: int = 1

_RUNS: Table = RunRow.__table__  # type: ignore[attr-defined]
_CASES: Table = CaseRow.__table__  # type: ignore[attr-defined]
_MESSAGES: Table = MessageRow.__table__  # type: ignore[attr-defined]
_TOOL_CALLS: Table = ToolCallRow.__table__  # type: ignore[attr-defined]
_METRICS: Table = MetricRow.__table__  # type: ignore[attr-defined]
_LEASES: Table = RunLeaseRow.__table__  # type: ignore[attr-defined]
_STORED_CASE = select(_CASES).where(_CASES.c.id == bindparam("case_pk"))  # a case as written, read back


class StudyStore:
    """The result store of studies. Build it with :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert_case: Any = None  # the case INSERT of this backend, built on first use

    @classmethod
    def open(cls, url: str | None, home: Path) -> StudyStore:
        """``None``: the SQLite file ``<home>/studies.sqlite``; else a ``sqlite:///`` or ``postgresql://`` URL.
        Creates missing tables and checks the schema version."""
        from sqlalchemy.exc import DBAPIError

        resolved = resolve_url(url, home)
        backend = make_url(resolved).get_backend_name()
        try:
            engine = create_store_engine(resolved)
        except OSError as exc:  # the SQLite file or its folder cannot be created
            raise StoreUnavailable(f"the {backend} study store cannot be opened ({exc.strerror})") from None
        try:
            ensure_schema(engine)
        except DBAPIError as exc:  # the driver's first line says why; the URL (and any password) is not repeated
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0][:200] if exc.orig is not None else type(exc).__name__
            raise StoreUnavailable(f"the {backend} study store cannot be opened: {redact_text(reason)}") from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def backend(self) -> str:
        return self._engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL with any password hidden (safe to log)."""
        return make_url(self._engine.url).render_as_string(hide_password=True)

    def connect_url(self) -> str:
        """The database URL with its password: for processes that open this same store (the case workers of a
        study on a cluster). Never log it; :attr:`url` is the printable one."""
        return make_url(self._engine.url).render_as_string(hide_password=False)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: write})
            with connection.begin():
                yield connection

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self.backend == "postgresql" else sqlite.insert)(table)

    # -- runs ----------------------------------------------------------------------------

    def create_run(self, run_id: str, study: str, config: Mapping[str, Any], config_hash: str, *,
                   lease_owner: str | None = None, lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> RunRecord:
        """Start a new run; :class:`RunExists` if the id is taken (resume with :meth:`resume_run`).
        ``lease_owner``: take the run's lease for this owner in the same transaction (see leases)."""
        require_text(run_id=run_id, study=study, config_hash=config_hash)
        check_name(run_id, "the run id")  # run ids name report folders and export files
        # api keys and URL passwords never reach the store (nor reports or exports read from it)
        values = {"run_id": run_id, "study": study, "config": redact(dict(config)), "config_hash": config_hash,
                  "medagent_version": medagent_version(), "git_sha": git_sha(), "status": "running",
                  "created_at": now(), "finished_at": None}
        with self._transaction(write=True) as connection:
            inserted = connection.execute(self._insert(_RUNS).values(**values)
                                          .on_conflict_do_nothing(index_elements=["run_id"])
                                          .returning(_RUNS.c.run_id)).scalar_one_or_none()
            if inserted is None:
                raise RunExists(f"a run with id {run_id!r} already exists; resume it or choose another id",
                                run_id=run_id)
            if lease_owner is not None:
                leases.take(connection, self._insert(_LEASES), run_id, lease_owner, lease_ttl_s)
            return self._run(connection, run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._transaction() as connection:
            row = connection.execute(select(_RUNS).where(_RUNS.c.run_id == run_id)).mappings().first()
        return run_record(row) if row is not None else None

    def runs(self) -> list[RunRecord]:
        with self._transaction() as connection:
            rows = connection.execute(select(_RUNS).order_by(_RUNS.c.created_at, _RUNS.c.run_id)).mappings()
            return [run_record(row) for row in rows]

    def resume_run(self, run_id: str, config: Mapping[str, Any], config_hash: str, *, force: bool = False,
                   lease_owner: str | None = None, lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> RunRecord:
        """Mark a run running again. A changed configuration is refused (:class:`ConfigChanged`) unless
        ``force``; forced, the run takes the new configuration and later cases carry its hash.
        ``lease_owner``: take the run's lease first; :class:`RunInProgress` while a live runner holds it."""
        with self._transaction(write=True) as connection:
            run = self._run(connection, run_id)
            if lease_owner is not None:
                leases.take(connection, self._insert(_LEASES), run_id, lease_owner, lease_ttl_s)
            if run.config_hash != config_hash and not force:
                raise ConfigChanged(f"run {run_id!r} was started with configuration {run.config_hash[:12]}, not "
                                    f"{config_hash[:12]}; resume with force to continue it anyway", run_id=run_id)
            connection.execute(update(_RUNS).where(_RUNS.c.run_id == run_id).values(
                status="running", finished_at=None, config=redact(dict(config)), config_hash=config_hash))
            return self._run(connection, run_id)

    def renew_lease(self, run_id: str, owner: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        """Keep holding a run's lease; :class:`RunInProgress` when another runner took it over."""
        with self._transaction(write=True) as connection:
            leases.renew(connection, run_id, owner, ttl_s)

    def release_lease(self, run_id: str, owner: str) -> None:
        with self._transaction(write=True) as connection:
            leases.release(connection, run_id, owner)

    def finish_run(self, run_id: str, status: RunStatus = "finished") -> RunRecord:
        with self._transaction(write=True) as connection:
            self._run(connection, run_id)
            connection.execute(update(_RUNS).where(_RUNS.c.run_id == run_id).values(status=status,
                                                                                   finished_at=now()))
            return self._run(connection, run_id)

    def _run(self, connection: Connection, run_id: str) -> RunRecord:
        row = connection.execute(select(_RUNS).where(_RUNS.c.run_id == run_id)).mappings().first()
        if row is None:
            raise UnknownRun(f"no run with id {run_id!r} in the study store", run_id=run_id)
        return run_record(row)

    # -- cases ---------------------------------------------------------------------------

    def record_case(self, run_id: str, case_id: str, repeat: int, result: CaseResult,
                    messages: Sequence[Mapping[str, Any]] = (), tool_calls: Sequence[ToolCallRecord] = (),
                    *, retry: bool = False, attempts: int = 1) -> CaseWrite:
        """Write one terminal case with its planner messages and tool calls, atomically and idempotently.
        ``attempts``: how many times this result's computation was started (2: its first worker died and it was
        run again), added to the stored count when a retry replaces a failed case."""
        _check_case(run_id, case_id, repeat, attempts)
        with self._transaction(write=True) as connection:
            return self._record(connection, self._run(connection, run_id), case_id, repeat, result, messages,
                                tool_calls, retry=retry, attempts=attempts)

    def record_cases(self, run_id: str, cases: Sequence[CaseEntry], *, retry: bool = False) -> list[CaseWrite]:
        """Several cases as :meth:`record_case` writes each, in one transaction (one commit instead of one per
        case: a study writes the cases that finished while its previous write was under way together). All or
        none is written; the writes in the order given."""
        for entry in cases:
            _check_case(run_id, entry.case_id, entry.repeat, entry.attempts)
        with self._transaction(write=True) as connection:
            run = self._run(connection, run_id)
            return [self._record(connection, run, entry.case_id, entry.repeat, entry.result, entry.messages,
                                 entry.tool_calls, retry=retry, attempts=entry.attempts) for entry in cases]

    def _record(self, connection: Connection, run: RunRecord, case_id: str, repeat: int, result: CaseResult,
                messages: Sequence[Mapping[str, Any]], tool_calls: Sequence[ToolCallRecord], *, retry: bool,
                attempts: int) -> CaseWrite:
        run_id = run.run_id
        values = case_values(result, run)
        if self._insert_case is None:  # built once: building the statement per case cost more than running it
            self._insert_case = (self._insert(_CASES).on_conflict_do_nothing(
                index_elements=["run_id", "case_id", "repeat"]).returning(_CASES.c.id))
        case_pk = connection.execute(self._insert_case, {
            "run_id": run_id, "case_id": case_id, "repeat": repeat, "attempts": attempts, **values}
        ).scalar_one_or_none()
        if case_pk is None:
            key = (_CASES.c.run_id == run_id) & (_CASES.c.case_id == case_id) & (_CASES.c.repeat == repeat)
            # FOR UPDATE (PostgreSQL): a concurrent retry waits and then sees this one's outcome
            query = select(_CASES).where(key).with_for_update() if retry else select(_CASES).where(key)
            existing = connection.execute(query).mappings().one()
            if not (retry and existing["status"] == "failed"):
                return CaseWrite(record=case_record(existing), written=False)
            case_pk = existing["id"]
            connection.execute(delete(_MESSAGES).where(_MESSAGES.c.case_pk == case_pk))
            connection.execute(delete(_TOOL_CALLS).where(_TOOL_CALLS.c.case_pk == case_pk))
            connection.execute(update(_CASES).where(_CASES.c.id == case_pk)
                               .values(attempts=existing["attempts"] + attempts, **values))
        if messages:
            connection.execute(_MESSAGES.insert(), [
                {"case_pk": case_pk, "run_id": run_id, "position": position, "role": str(message.get("role", "")),
                 "message": dict(message)} for position, message in enumerate(messages)])
        if tool_calls:
            connection.execute(_TOOL_CALLS.insert(), [
                {"case_pk": case_pk, "run_id": run_id, "case_id": case_id, "repeat": repeat, "position": position,
                 "tool": call.tool, "call_id": call.call_id, "arguments": call.arguments, "output": call.output,
                 "ok": call.ok,
                 "error": call.error.model_dump(mode="json") if call.error else None,
                 "error_code": call.error_code, "duration_s": call.duration_s, "started_at": call.started_at}
                for position, call in enumerate(tool_calls)])
        stored = connection.execute(_STORED_CASE, {"case_pk": case_pk}).mappings().one()
        return CaseWrite(record=case_record(stored), written=True)

    def get_case(self, run_id: str, case_id: str, repeat: int) -> CaseRecord | None:
        query = select(_CASES).where((_CASES.c.run_id == run_id) & (_CASES.c.case_id == case_id)
                                     & (_CASES.c.repeat == repeat))
        with self._transaction() as connection:
            row = connection.execute(query).mappings().first()
        return case_record(row) if row is not None else None

    def cases(self, run_id: str, status: CaseStatus | None = None) -> list[CaseRecord]:
        query = select(_CASES).where(_CASES.c.run_id == run_id)
        if status is not None:
            query = query.where(_CASES.c.status == status)
        with self._transaction() as connection:
            rows = connection.execute(query.order_by(_CASES.c.case_id, _CASES.c.repeat)).mappings()
            return [case_record(row) for row in rows]

    def _keys(self, run_id: str, status: CaseStatus | None) -> set[CaseKey]:
        query = select(_CASES.c.case_id, _CASES.c.repeat).where(_CASES.c.run_id == run_id)
        if status is not None:
            query = query.where(_CASES.c.status == status)
        with self._transaction() as connection:
            return {(case_id, repeat) for case_id, repeat in connection.execute(query)}

    def completed_keys(self, run_id: str) -> set[CaseKey]:
        """Keys of the cases that succeeded."""
        return self._keys(run_id, "succeeded")

    def failed_keys(self, run_id: str) -> set[CaseKey]:
        """Keys of the cases recorded as failed (rerun them with ``record_case(..., retry=True)``)."""
        return self._keys(run_id, "failed")

    def recorded_keys(self, run_id: str) -> set[CaseKey]:
        """Every key with a terminal record: what a plain resume skips."""
        return self._keys(run_id, None)

    def messages(self, run_id: str, case_id: str, repeat: int) -> list[dict[str, Any]]:
        query = (select(_MESSAGES.c.message).join(_CASES, _CASES.c.id == _MESSAGES.c.case_pk)
                 .where((_CASES.c.run_id == run_id) & (_CASES.c.case_id == case_id) & (_CASES.c.repeat == repeat))
                 .order_by(_MESSAGES.c.position))
        with self._transaction() as connection:
            return [dict(message or {}) for message in connection.execute(query).scalars()]

    def tool_calls(self, run_id: str, case_id: str | None = None, repeat: int | None = None) -> list[StoredToolCall]:
        """Tool calls of a run (or of one case), ordered by case, repeat and call order."""
        query = select(_TOOL_CALLS).where(_TOOL_CALLS.c.run_id == run_id)
        if case_id is not None:
            query = query.where(_TOOL_CALLS.c.case_id == case_id)
        if repeat is not None:
            query = query.where(_TOOL_CALLS.c.repeat == repeat)
        order = (_TOOL_CALLS.c.case_id, _TOOL_CALLS.c.repeat, _TOOL_CALLS.c.position)
        with self._transaction() as connection:
            return [stored_tool_call(row) for row in connection.execute(query.order_by(*order)).mappings()]

    def counts(self, run_id: str) -> dict[str, int]:
        """Rows of each kind held for a run (cases, messages, tool_calls, metrics), counted in the tables."""
        tables = {"cases": _CASES, "messages": _MESSAGES, "tool_calls": _TOOL_CALLS, "metrics": _METRICS}
        with self._transaction() as connection:
            return {name: connection.execute(select(func.count()).select_from(table)
                                             .where(table.c.run_id == run_id)).scalar_one()
                    for name, table in tables.items()}

    # -- metrics and exports -------------------------------------------------------------

    def add_metrics(self, run_id: str, metrics: Iterable[MetricValue]) -> None:
        """Store named values; a name already stored for the same run or case is overwritten."""
        rows = [{"run_id": run_id, "scope": m.scope, "case_id": m.case_id, "repeat": m.repeat, "name": m.name,
                 "value": m.value, "details": m.details, "recorded_at": now()} for m in metrics]
        if not rows:
            return
        with self._transaction(write=True) as connection:
            self._run(connection, run_id)
            for row in rows:
                statement = self._insert(_METRICS).values(**row)
                connection.execute(statement.on_conflict_do_update(
                    index_elements=["run_id", "scope", "name"],
                    set_={"value": statement.excluded.value, "details": statement.excluded.details,
                          "recorded_at": statement.excluded.recorded_at}))

    def metrics(self, run_id: str) -> list[MetricValue]:
        query = select(_METRICS).where(_METRICS.c.run_id == run_id).order_by(_METRICS.c.scope, _METRICS.c.name)
        with self._transaction() as connection:
            return [metric_value(row) for row in connection.execute(query).mappings()]

    def cases_frame(self, run_id: str) -> pd.DataFrame:
        """One row per case in the layout :mod:`medagent.reports.schema` reads (plus provenance)."""
        from medagent.store.frames import cases_frame

        return cases_frame(self.cases(run_id))

    def tool_calls_frame(self, run_id: str) -> pd.DataFrame:
        from medagent.store.frames import tool_calls_frame

        return tool_calls_frame(self.tool_calls(run_id))


def _check_case(run_id: str, case_id: str, repeat: int, attempts: int) -> None:
    require_text(run_id=run_id, case_id=case_id)
    if repeat < 0:
        raise StoreError("repeat must be 0 or more", repeat=repeat)
    if attempts < 1:
        raise StoreError("attempts must be 1 or more", attempts=attempts)
