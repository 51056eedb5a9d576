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
import threading
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


RUN_YOUNG_GC_THRESHOLD = 20_000  # allocations between young collections during a run (Python's default: 700)
_runs_lock = threading.Lock()
_runs = 0  # runs going on in this process: the first one in sets the view, the last one out gives it back
_thresholds: tuple[int, ...] = ()


@contextmanager
def heap_frozen() -> Iterator[None]:
    """The garbage collector's view for the time of a run. What is alive when it starts (modules, models, the work
    list) is frozen out of sight: with hundreds of cases in flight, every full collection would walk all of it again
    (0.1-0.2 s each). Young collections come every 20,000 allocations instead of 700: each one promotes whatever
    hundreds of cases in flight hold at that moment, objects of a few milliseconds' life that full collections
    then walk. Collected first, so no garbage is kept; given back when the last run of the process ends."""
    global _runs, _thresholds
    with _runs_lock:
        _runs += 1
        if _runs == 1:
            gc.collect()
            gc.freeze()
            _thresholds = gc.get_threshold()
            gc.set_threshold(max(_thresholds[0], RUN_YOUNG_GC_THRESHOLD), *_thresholds[1:])
    try:
        yield
    finally:
        with _runs_lock:
            _runs -= 1
            if _runs == 0:
                gc.set_threshold(*_thresholds)
                gc.unfreeze()
