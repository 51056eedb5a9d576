"""A tool a study names by ``_target_`` (``tests.cluster_tool_parts.timed_tools``, allowed prefix ``tests.``) that
reports when it ran: each call sleeps, then returns its start and end on the wall clock and the process it ran
in, so a test counts from the stored calls how many ran at once, across every process of a cluster on one
machine."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from medagent.config import Settings
from medagent.experts import ExpertResult, Provenance
from medagent.tools.plugin import ImageInput, tool
from medagent.tools.spec import Tool

MAX_SLEEP_S = 5.0


class Interval(ExpertResult):
    started: float  # time.time() when the call began running (inside every limit)
    ended: float
    pid: int

    def summary_text(self) -> str:
        return f"ran {self.ended - self.started:.3f} s"


def timed_tools(settings: Settings, *, sleep_s: Sequence[float] = (0.3, 0.6),
                names: tuple[str, ...] = ("timed_probe",)) -> list[Tool[Any, Any]]:
    """A tool factory: one tool per name whose calls in a process sleep the durations ``sleep_s`` in turn (each
    at most 5 s) and report their interval. Unequal durations keep two calls that started together from ending
    together, so a slot one frees is taken while the other still runs."""
    pauses = [min(max(float(pause), 0.0), MAX_SLEEP_S) for pause in sleep_s] or [0.0]

    def make(name: str) -> Tool[Any, Any]:
        turns = itertools.cycle(pauses)

        @tool(name=name, summary="Waits a moment; reports when it ran and in which process.")
        async def timed(arguments: ImageInput) -> Interval:
            started = time.time()
            await asyncio.sleep(next(turns))
            return Interval(provenance=Provenance(expert=name, model_id="tests/timed", device="cpu"),
                            started=started, ended=time.time(), pid=os.getpid())

        return timed

    return [make(name) for name in names]


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at once (one ending exactly when another starts does not overlap it)."""
    edges = sorted(edge for start, end in intervals for edge in ((start, 1), (end, -1)))  # an end sorts first
    open_now = peak = 0
    for _, change in edges:
        open_now += change
        peak = max(peak, open_now)
    return peak
