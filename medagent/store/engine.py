"""Engines for the study store: a WAL-mode SQLite file by default, PostgreSQL (psycopg 3) by URL.

SQLite notes. pysqlite's own transaction handling is switched off (``isolation_level=None``)
so that medagent emits ``BEGIN`` itself: write transactions start with ``BEGIN IMMEDIATE``,
taking the write lock up front, so two writers never deadlock upgrading a read lock; reads
use a plain ``BEGIN`` and, thanks to WAL, never wait for a writer. Connections come from
SQLAlchemy's pool (one per thread while in use, ``check_same_thread=False``) and wait up to
``busy_timeout`` for the lock. ``synchronous=NORMAL`` in WAL mode keeps every committed
transaction across a process kill; only an OS crash or power loss may drop the last commits,
and never half of one.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event, select, text, update
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel, col

import medagent
from medagent.files import private_dir, touch_private
from medagent.store.records import StoreError, StoreSchemaMismatch, now
from medagent.store.tables import SCHEMA_VERSION, STUDY_TABLES, SchemaVersionRow

DEFAULT_FILE_NAME: Final = "studies.sqlite"
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
WRITE_OPTION: Final = "medagent_write"
# any constant: serialises schema creation between processes opening one PostgreSQL database
_SCHEMA_LOCK_KEY: Final = 0x6D656461


def resolve_url(url: str | None, home: Path) -> str:
    """``None`` -> ``sqlite:///<home>/studies.sqlite``; ``postgresql://`` and ``postgres://`` -> psycopg 3."""
    if url is None:
        private_dir(home)
        return f"sqlite:///{(home / DEFAULT_FILE_NAME).resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    try:
        backend = make_url(url).get_backend_name()
    except Exception as error:  # sqlalchemy raises ArgumentError; the URL may hold a password: do not echo it
        raise StoreError("the study store URL is not a valid database URL") from error
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"the study store supports sqlite and postgresql URLs, not {backend!r}")
    if backend == "sqlite" and make_url(url).database in (None, "", ":memory:"):
        raise StoreError("the study store needs an SQLite file (an in-memory database would lose the run)")
    return url


def _strict_json(value: Any) -> str:
    # PostgreSQL rejects NaN in JSON; refusing it everywhere keeps both backends identical
    return json.dumps(value, allow_nan=False)


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database:
        touch_private(database)  # 0600 before SQLite opens it; its WAL and shm files take the same mode
    engine = create_engine(url, json_serializer=_strict_json,
                           connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # medagent issues BEGIN itself (see module docstring)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def create_store_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(url, json_serializer=_strict_json, pool_pre_ping=True)


def ensure_schema(engine: Engine) -> int:
    """Create missing tables and record or check the schema version, in one write transaction."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            SQLModel.metadata.create_all(connection, tables=list(STUDY_TABLES))
            recorded = connection.execute(select(col(SchemaVersionRow.version))).scalar_one_or_none()
            if recorded is None:
                connection.execute(SchemaVersionRow.__table__.insert().values(  # type: ignore[attr-defined]
                    id=1, version=SCHEMA_VERSION, created_at=now()))
                return SCHEMA_VERSION
            # migrations: upgrade ``recorded`` step by step in the same transaction, then update the row
            if recorded == 1:  # tool calls keep who asked for them
                connection.execute(text("ALTER TABLE study_tool_calls ADD COLUMN call_id VARCHAR(200)"))
                recorded = 2
                versions = SchemaVersionRow.__table__  # type: ignore[attr-defined]
                connection.execute(update(versions).values(version=recorded))
    if recorded != SCHEMA_VERSION:
        raise StoreSchemaMismatch(f"the study store has schema version {recorded}; this medagent reads version "
                                  f"{SCHEMA_VERSION} and does not migrate it", recorded=recorded,
                                  expected=SCHEMA_VERSION)
    return recorded


@functools.cache
def git_sha() -> str | None:
    """The commit of the medagent checkout, or None outside a git checkout (an installed wheel)."""
    package_dir = Path(medagent.__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package_dir, capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        return None
    # an installed medagent inside some other repository (a venv in a project) is not that repository's commit
    top_level, sha = Path(lines[0]).resolve(), lines[1]
    return sha if package_dir.parent == top_level and len(sha) in (40, 64) else None


def medagent_version() -> str:
    return medagent.__version__
