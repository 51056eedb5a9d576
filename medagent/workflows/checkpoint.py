"""LangGraph checkpointers: a SQLite file by default, Postgres by URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from medagent.errors import ConfigurationError, InfrastructureError, MedagentError, MissingDependency
from medagent.files import touch_private


class CheckpointUrlInvalid(ConfigurationError):
    """The checkpoint URL cannot be parsed (the message never repeats it: it may hold a password)."""

    code = "checkpoint_url_invalid"


class CheckpointUnavailable(InfrastructureError):
    """The checkpoint database cannot be opened or reached."""

    code = "checkpoint_unavailable"


@contextlib.asynccontextmanager
async def open_checkpointer(url: str) -> AsyncIterator[Any]:
    """``postgresql://...`` opens langgraph-checkpoint-postgres; ``memory://`` keeps checkpoints in this
    process only (study cases, which are recorded whole in the study store); anything else is a SQLite file."""
    if url == "memory://":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
        return
    async with contextlib.AsyncExitStack() as stack:
        try:
            saver = await _open(stack, url)
        except MedagentError:
            raise
        except Exception as exc:  # noqa: BLE001 - drivers raise many types; theirs may quote the URL and password
            if isinstance(exc, ValueError) or type(exc).__name__ == "ProgrammingError":  # psycopg: a bad URL
                raise CheckpointUrlInvalid("the checkpoint URL is not a valid database URL") from None
            raise CheckpointUnavailable(f"the checkpoint database cannot be opened ({type(exc).__name__})") from None
        yield saver


async def _open(stack: contextlib.AsyncExitStack, url: str) -> Any:
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError as exc:
            raise MissingDependency("Postgres checkpoints need the 'postgres' extra (langgraph-checkpoint-postgres)") from exc
        saver = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(url))
        await saver.setup()
        return saver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = touch_private(Path(url.removeprefix("sqlite:///")).expanduser())  # 0600 before SQLite opens it
    if not path.is_file():  # refused here: aiosqlite's worker thread outlives a failed open and raises later
        raise CheckpointUnavailable("the checkpoint path is not a file")
    return await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(path)))
