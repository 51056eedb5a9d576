"""The service's SQL store: API keys, the audit log and session owners, beside the study store's tables.

One engine per process, built as the study store builds its own (:mod:`medagent.store.engine`): a WAL-mode
SQLite file created 0600 (``<home>/service.sqlite`` by default) or PostgreSQL by URL. Write transactions
take the write lock up front (``BEGIN IMMEDIATE`` on SQLite), so the audit log's chain is appended by one
writer at a time across processes. The service's tables are created on open; the study store's are not
touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from medagent.files import private_dir
from medagent.redaction import redact_text
from medagent.store.engine import WRITE_OPTION, create_store_engine, resolve_url
from medagent.store.records import StoreUnavailable

DEFAULT_FILE_NAME: Final = "service.sqlite"
# any constant, other than the study store's: serialises table creation between processes on one PostgreSQL
_SCHEMA_LOCK_KEY: Final = 0x6D657376


def service_url(url: str | None, home: Path) -> str:
    """``None`` -> ``sqlite:///<home>/service.sqlite``; other URLs as the study store reads them."""
    if url is None:
        private_dir(home)
        return f"sqlite:///{(home / DEFAULT_FILE_NAME).resolve()}"
    return resolve_url(url, home)


def utc_now() -> str:
    """The current time as stored by the service: ISO 8601 in UTC, microseconds, a ``Z``; the same text on
    every backend, so a record's hash does not depend on how a database returns its timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ServiceDatabase:
    """The engine and the tables of the service; :meth:`open` creates the missing tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str | None, home: Path, tables: list[Table]) -> ServiceDatabase:
        resolved = service_url(url, home)
        backend = make_url(resolved).get_backend_name()
        try:
            engine = create_store_engine(resolved)
        except OSError as exc:
            raise StoreUnavailable(f"the {backend} service store cannot be opened ({exc.strerror})") from None
        database = cls(engine)
        try:
            with database.writing() as connection:
                if engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                SQLModel.metadata.create_all(connection, tables=tables)
        except DBAPIError as exc:  # the driver's first line says why; never the URL (it may hold a password)
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0][:200] if exc.orig is not None else type(exc).__name__
            raise StoreUnavailable(f"the {backend} service store cannot be opened: {redact_text(reason)}") from None
        except BaseException:
            engine.dispose()
            raise
        return database

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """One write transaction (the write lock taken at its start on SQLite)."""
        with self.engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                yield connection

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def ping(self) -> bool:
        """True when the database answers a trivial query (readiness)."""
        try:
            with self.reading() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()


def table(model: Any) -> Table:
    """The SQLAlchemy table of a ``table=True`` sqlmodel class (sqlmodel's metaclass does not declare it)."""
    result: Table = model.__table__
    return result
