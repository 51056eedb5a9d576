"""A start-up gate for cases in flight, and a run's view of the garbage collector.

When a study starts N cases at once, the event loop runs their CPU-bound start-up (attach, graph
set-up, request building) interleaved, so the first planner request leaves only after all N have
done most of theirs: the servers idle for the sum of every case's start-up. The gate admits a few
cases at a time into start-up; each leaves at its first wait on a planner server (or when it ends),
so requests go out one after another from the first milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

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


@contextmanager
def heap_frozen() -> Iterator[None]:
    """For the time of a run, what is alive when it starts (modules, models, the work list) is out of the cyclic
    garbage collector's sight: with hundreds of cases in flight, every full collection would walk all of it again
    (0.1-0.2 s each, several per thousand cases). Collected first, so no garbage is kept; given back after."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
