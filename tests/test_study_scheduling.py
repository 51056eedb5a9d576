"""The study runner's start-up gate: few cases in start-up at once, released at their first wait."""

from __future__ import annotations

import asyncio

import pytest

from medagent.agents.pool import entering_wait
from medagent.studies.scheduling import StartupGate


@pytest.mark.asyncio
async def test_cases_leave_start_up_at_their_first_wait_so_requests_go_out_early() -> None:
    gate = StartupGate(width=2)
    in_start_up, peak = 0, 0
    events: list[str] = []

    async def case(index: int) -> None:
        nonlocal in_start_up, peak
        async with gate.admit():
            in_start_up += 1
            peak = max(peak, in_start_up)
            for _ in range(3):  # start-up work that yields to the loop, as graph set-up does
                await asyncio.sleep(0)
            in_start_up -= 1
            events.append(f"request {index}")

            async def planner_call() -> None:  # graph nodes run in child tasks
                entering_wait()
                await asyncio.sleep(0.01)

            await asyncio.create_task(planner_call())
            events.append(f"answer {index}")

    await asyncio.gather(*(case(index) for index in range(8)))
    assert peak == 2
    # every request left before the first answer came back: start-up was never held up by waiting cases
    assert [e for e in events[:8]] == [f"request {index}" for index in range(8)]


@pytest.mark.asyncio
async def test_a_case_that_never_waits_or_fails_still_frees_its_slot() -> None:
    gate = StartupGate(width=1)

    async def failing() -> None:
        async with gate.admit():
            raise ValueError("case failed during start-up")

    with pytest.raises(ValueError):
        await failing()
    async with gate.admit():  # the slot came back
        entering_wait()
        entering_wait()  # a second wait releases nothing twice
    await asyncio.wait_for(_admit_twice(gate), timeout=1)
    entering_wait()  # outside any case: no effect
    with pytest.raises(ValueError):
        StartupGate(width=0)


async def _admit_twice(gate: StartupGate) -> None:
    for _ in range(2):
        async with gate.admit():
            pass
