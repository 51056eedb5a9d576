"""A start-up gate for cases in flight.

When a study starts N cases at once, the event loop runs their CPU-bound start-up (attach, graph
set-up, request building) interleaved, so the first planner request leaves only after all N have
done most of theirs: the servers idle for the sum of every case's start-up. The gate admits a few
cases at a time into start-up; each leaves at its first wait on a planner server (or when it ends),
so requests go out one after another from the first milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from medagent.agents.pool import calling_on_wait


class StartupGate:
    def __init__(self, width: int = 2) -> None:
        if width < 1:
            raise ValueError("the start-up gate needs a width of at least 1")
        self._slots = asyncio.Semaphore(width)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a start-up slot until the case first waits on a planner, or ends."""
        await self._slots.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._slots.release()

        try:
            with calling_on_wait(release):  # graph nodes run in child tasks, which copy this context
                yield
        finally:
            release()
