"""Where one agent-loop study case spends its time in the client, phase by phase: cases one at a time against
a local OpenAI-compatible server (its own process) answering at once, each phase timed by wrapping the functions
that bound it. The figures are wall time per case on the event loop, which is CPU time here (nothing waits but the
server's answer, inside "request").

    .venv/bin/python benchmarks/profile_case_cpu.py [--cases 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_study_concurrency import _run, _server
from medagent import api
from medagent.agents import pool
from medagent.studies import runner
from medagent.workflows import agent_loop

PHASES = ["runner (scheduling, store writes)", "attach", "graph set-up (to the planner node)", "prompt and messages",
          "request and answer stream", "graph end and state", "history, case result"]


class Clock:
    def __init__(self) -> None:
        self.spent: defaultdict[str, float] = defaultdict(float)
        self.last: float | None = None

    def mark(self, phase: str) -> None:
        """The time since the previous mark is ``phase``'s."""
        now = time.perf_counter()
        if self.last is not None:
            self.spent[phase] += now - self.last
        self.last = now


def _wrap(owner: Any, name: str, clock: Clock, before: str, after: str | None = None) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        clock.mark(before)
        result = await original(*args, **kwargs)
        if after is not None:
            clock.mark(after)
        return result

    setattr(owner, name, timed)


def instrument(clock: Clock) -> None:
    _wrap(runner.StudyRunner, "_agent_case", clock, PHASES[0], PHASES[6])
    _wrap(api.Session, "attach", clock, PHASES[1], PHASES[1])
    _wrap(agent_loop.AgentLoop, "planner_node", clock, PHASES[2])
    _wrap(pool.LimitedPlanner, "complete", clock, PHASES[3], PHASES[4])
    _wrap(api.Session, "history", clock, PHASES[5])


async def main(cases: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    clock = Clock()
    with _server(0.0, 4) as url:
        await _run(folder, url, 2, 2, "warm-up")
        instrument(clock)
        clock.spent.clear()
        clock.last = None
        wall, cpu = await _run(folder, url, cases, 1, "profiled")
    phases = {phase: round(clock.spent.get(phase, 0.0) / cases * 1000, 3) for phase in PHASES}
    return {"cases": cases, "wall_ms_per_case": round(wall / cases * 1000, 3),
            "cpu_ms_per_case": round(cpu / cases * 1000, 3), "phases_ms_per_case": phases}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=400)
    print(json.dumps(asyncio.run(main(parser.parse_args().cases)), indent=2))
