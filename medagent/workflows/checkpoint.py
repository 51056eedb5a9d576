"""LangGraph checkpointers: a SQLite file by default, Postgres by URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from medagent.errors import MissingDependency
from medagent.files import touch_private


@contextlib.asynccontextmanager
async def open_checkpointer(url: str) -> AsyncIterator[Any]:
    """``postgresql://...`` opens langgraph-checkpoint-postgres; ``memory://`` keeps checkpoints in this
    process only (study cases, which are recorded whole in the study store); anything else is a SQLite file."""
    if url == "memory://":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
        return
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError as exc:
            raise MissingDependency("Postgres checkpoints need the 'postgres' extra (langgraph-checkpoint-postgres)") from exc
        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            yield saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = touch_private(Path(url.removeprefix("sqlite:///")).expanduser())  # 0600 before SQLite opens it
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield saver
