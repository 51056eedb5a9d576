"""Which key owns which session, and the library sessions the service keeps open.

The library keeps a session's conversation in its checkpointer and checks its owner once it has run
(``Agent.session(id, owner=...)``); the service also records each session it creates here, with its owner,
so a session is its owner's from its first request (before any turn), can be listed and deleted, and is
``404`` for every other key. Images uploaded and not yet asked about are kept here too, so a restarted
service still offers them to the next question.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from typing import Any, Final

from pydantic import BaseModel
from sqlalchemy import JSON, Column, func, select, update
from sqlmodel import Field, SQLModel

from medagent.api import Agent, Session
from medagent.errors import ConfigurationError, SessionNotFound
from medagent.service.db import ServiceDatabase, table, utc_now

MAX_OPEN_SESSIONS: Final = 10_000  # library sessions kept in memory; one evicted is rebuilt from the store


class TooManySessions(ConfigurationError):
    """A key holds as many sessions as it may: delete some first."""

    code = "too_many_sessions"


class SessionRow(SQLModel, table=True):
    __tablename__ = "service_sessions"

    session_id: str = Field(primary_key=True, max_length=128)
    key_id: str = Field(index=True, max_length=32)
    created_at: str = Field(max_length=40)
    deleted_at: str | None = Field(default=None, max_length=40)
    pending_images: list[Any] | None = Field(default=None, sa_column=Column(JSON))


class SessionInfo(BaseModel):
    id: str
    created_at: str


class Sessions:
    TABLES: Final = [table(SessionRow)]

    def __init__(self, database: ServiceDatabase, agent: Agent, *, max_per_key: int) -> None:
        self.database = database
        self.agent = agent
        self.max_per_key = max_per_key
        self._open: OrderedDict[str, Session] = OrderedDict()

    async def create(self, key_id: str) -> SessionInfo:
        return await asyncio.to_thread(self._create, key_id)

    def _create(self, key_id: str) -> SessionInfo:
        rows = table(SessionRow)
        row = SessionRow(session_id=uuid.uuid4().hex, key_id=key_id, created_at=utc_now(), pending_images=[])
        with self.database.writing() as connection:
            held = connection.execute(select(func.count()).select_from(rows).where(
                rows.c.key_id == key_id, rows.c.deleted_at.is_(None))).scalar_one()
            if held >= self.max_per_key:
                raise TooManySessions(f"a key may hold {self.max_per_key} sessions; delete some first")
            connection.execute(rows.insert().values(**row.model_dump()))
        return SessionInfo(id=row.session_id, created_at=row.created_at)

    async def owned(self, key_id: str, *, limit: int, offset: int) -> list[SessionInfo]:
        def query() -> list[SessionInfo]:
            rows = table(SessionRow)
            with self.database.reading() as connection:
                found = connection.execute(
                    select(rows.c.session_id, rows.c.created_at)
                    .where(rows.c.key_id == key_id, rows.c.deleted_at.is_(None))
                    .order_by(rows.c.created_at.desc(), rows.c.session_id).limit(limit).offset(offset))
                return [SessionInfo(id=row.session_id, created_at=row.created_at) for row in found]

        return await asyncio.to_thread(query)

    def _row(self, key_id: str, session_id: str) -> SessionRow:
        rows = table(SessionRow)
        with self.database.reading() as connection:
            found = connection.execute(select(rows).where(rows.c.session_id == session_id)).mappings().first()
        if found is None or found["key_id"] != key_id or found["deleted_at"] is not None:
            raise SessionNotFound("no such session")  # another key's session is not confirmed to exist
        return SessionRow.model_validate(dict(found))

    async def info(self, key_id: str, session_id: str) -> SessionInfo:
        row = await asyncio.to_thread(self._row, key_id, session_id)
        return SessionInfo(id=row.session_id, created_at=row.created_at)

    async def open(self, key_id: str, session_id: str) -> Session:
        """The key's session; :class:`SessionNotFound` for an unknown, deleted or other key's id."""
        if len(session_id) > 128:
            raise SessionNotFound("no such session")
        row = await asyncio.to_thread(self._row, key_id, session_id)
        session = self._open.get(session_id)
        if session is None:
            session = self.agent.session(session_id, owner=key_id)
            for image_id in row.pending_images or []:  # uploaded before a restart, not yet asked about
                session.attach_stored(str(image_id))
            self._open[session_id] = session
            while len(self._open) > MAX_OPEN_SESSIONS:
                self._open.popitem(last=False)
        self._open.move_to_end(session_id)
        return session

    async def add_pending(self, session_id: str, image_id: str) -> None:
        """Note an uploaded image the next question will be about (kept across a restart)."""
        def write() -> None:
            rows = table(SessionRow)
            with self.database.writing() as connection:
                pending = connection.execute(select(rows.c.pending_images)
                                             .where(rows.c.session_id == session_id)).scalar_one_or_none()
                connection.execute(update(rows).where(rows.c.session_id == session_id)
                                   .values(pending_images=[*(pending or []), image_id]))

        await asyncio.to_thread(write)

    async def clear_pending(self, session_id: str) -> None:
        """A question took the pending images (they are in the session's checkpoint from now on)."""
        def write() -> None:
            rows = table(SessionRow)
            with self.database.writing() as connection:
                connection.execute(update(rows).where(rows.c.session_id == session_id).values(pending_images=[]))

        await asyncio.to_thread(write)

    async def delete(self, key_id: str, session_id: str) -> None:
        """Forget the session: ``404`` from now on, its checkpoints removed where the library can."""
        session = await self.open(key_id, session_id)

        def write() -> None:
            rows = table(SessionRow)
            with self.database.writing() as connection:
                connection.execute(update(rows).where(rows.c.session_id == session_id)
                                   .values(deleted_at=utc_now(), pending_images=[]))

        await asyncio.to_thread(write)
        self._open.pop(session_id, None)
        await session.delete()
