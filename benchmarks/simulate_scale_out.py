"""Scale-out of a study, simulated from measured per-case costs: wall time and efficiency for 1, 4, 16 and 64 case
workers against N planner replicas, each serving c requests at once with a fixed latency.

A discrete-event simulation (pure Python, no Ray needed) of what a run does:

- one worker (workers = 1) is a local run: one process, one core, ``client_cpu_ms`` of CPU per case;
- more workers are a run on a Ray cluster: each worker is one core and runs ``client_cpu_ms + ray_overhead_ms -
  driver_cpu_ms`` of CPU per case; the driver, one process on one core, spends ``driver_cpu_ms`` per case (dispatch,
  events, every store write); a case also waits ``ray_latency_ms`` for its round trip to the worker;
- a case's CPU is split evenly around its ``calls`` planner calls, made one after the other; a call takes a free
  slot of the N·c planner slots (requests are routed to the least-loaded replica, so the slots form one pool) and
  holds it ``latency_s``; CPU and planner slots are served first come, first served;
- at most ``in_flight`` cases are in flight across the run (``concurrency.cases``), each sent to the worker with
  the fewest cases in flight.

Efficiency is the speedup over one worker divided by the workers; the bound column names the resource busiest
over the run (planner slots, the workers' cores or the driver's), or "in flight" when none is busy 90% of the
time: then ``in_flight`` cases cannot keep them busy. The defaults are the figures
benchmarks/bench_ray_overhead.py measured with --cases 256 (1 planner call per case, 1.0 s planner latency; two
nodes on one machine of 2 cores).

    .venv/bin/python benchmarks/simulate_scale_out.py [--cases 4096] [--replicas 4] [--slots 16] [--calls 1]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_CASES = 10_000_000  # beyond it a simulated run takes minutes
SATURATED = 0.9  # a resource busier than this over the run is what bounds it


class Costs(BaseModel):
    """What one case costs and what serves it; the defaults: benchmarks/bench_ray_overhead.py's figures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cases: int = Field(default=4096, ge=1, le=MAX_CASES)
    calls: int = Field(default=1, ge=0, le=1000, description="planner calls per case, one after the other")
    latency_s: float = Field(default=1.0, ge=0, le=3600, description="one planner call, at a free slot")
    replicas: int = Field(default=4, ge=1, le=10_000)
    slots: int = Field(default=16, ge=1, le=10_000, description="requests one replica serves at once")
    client_cpu_ms: float = Field(default=20.3, ge=0, le=3_600_000, description="CPU per case, in one process")
    ray_overhead_ms: float = Field(default=41.0, ge=0, le=3_600_000, description="CPU per case Ray adds")
    driver_cpu_ms: float = Field(default=14.0, ge=0, le=3_600_000, description="CPU per case on Ray's driver")
    ray_latency_ms: float = Field(default=47.0, ge=0, le=3_600_000, description="round trip driver-worker")
    in_flight: int = Field(default=256, ge=1, le=1_000_000, description="cases in flight across the run")


class Outcome(BaseModel):
    workers: int
    wall_s: float
    planner_busy: float = Field(description="share of the planner slots' time in use")
    worker_busy: float = Field(description="share of the workers' cores' time in use")
    driver_busy: float = Field(description="share of the driver's core's time in use (Ray only)")


class _Station:
    """``servers`` identical servers and one first-come-first-served queue."""

    def __init__(self, clock: _Clock, servers: int) -> None:
        self._clock, self._free, self.busy_s = clock, servers, 0.0
        self._queue: deque[tuple[float, Callable[[], None]]] = deque()

    def submit(self, duration: float, then: Callable[[], None]) -> None:
        if self._free:
            self._start(duration, then)
        else:
            self._queue.append((duration, then))

    def _start(self, duration: float, then: Callable[[], None]) -> None:
        self._free -= 1
        self.busy_s += duration
        self._clock.at(duration, lambda: self._finish(then))

    def _finish(self, then: Callable[[], None]) -> None:
        self._free += 1
        if self._queue:
            self._start(*self._queue.popleft())
        then()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # same time: first scheduled, first run

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay, next(self._order), action))

    def run(self) -> None:
        while self._events:
            self.now, _, action = heapq.heappop(self._events)
            action()


def simulate(costs: Costs, workers: int) -> Outcome:
    """One run of ``costs.cases`` cases on ``workers`` workers (1: in one process; more: on Ray)."""
    if not 1 <= workers <= 100_000:
        raise ValueError("workers must be within 1..100000")
    clock = _Clock()
    on_ray = workers > 1
    planner = _Station(clock, costs.replicas * costs.slots)
    cores = [_Station(clock, 1) for _ in range(workers)]
    driver = _Station(clock, 1)
    loads = [0] * workers
    worker_cpu_s = (costs.client_cpu_ms + (costs.ray_overhead_ms - costs.driver_cpu_ms if on_ray else 0.0)) / 1000
    chunk_s = max(worker_cpu_s, 0.0) / (costs.calls + 1)
    waiting = iter(range(costs.cases))

    def start_next() -> None:
        if next(waiting, None) is None:
            return
        worker = min(range(workers), key=loads.__getitem__)
        loads[worker] += 1
        if on_ray:
            clock.at(costs.ray_latency_ms / 1000, lambda: step(worker, costs.calls))
        else:
            step(worker, costs.calls)

    def step(worker: int, calls_left: int) -> None:
        """The CPU before the next call (or the last CPU of the case), then that call."""
        if calls_left:
            cores[worker].submit(chunk_s, lambda: planner.submit(costs.latency_s, lambda: step(worker, calls_left - 1)))
        else:
            cores[worker].submit(chunk_s, lambda: finish(worker))

    def finish(worker: int) -> None:
        loads[worker] -= 1
        if on_ray:  # the outcome is written by the driver, whose core is one for the whole run
            driver.submit(costs.driver_cpu_ms / 1000, start_next)
        else:
            start_next()

    for _ in range(min(costs.in_flight, costs.cases)):
        start_next()
    clock.run()
    wall = clock.now
    slots = costs.replicas * costs.slots
    return Outcome(workers=workers, wall_s=wall, planner_busy=planner.busy_s / (slots * wall) if wall else 0.0,
                   worker_busy=sum(core.busy_s for core in cores) / (workers * wall) if wall else 0.0,
                   driver_busy=driver.busy_s / wall if wall else 0.0)


def table(costs: Costs, workers: Sequence[int] = (1, 4, 16, 64)) -> list[dict[str, Any]]:
    outcomes = [simulate(costs, count) for count in workers]
    base = outcomes[0].wall_s * outcomes[0].workers
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        busiest = max(("planner", outcome.planner_busy), ("workers", outcome.worker_busy),
                      ("driver", outcome.driver_busy), key=lambda pair: pair[1])
        if busiest[1] < SATURATED:  # nothing is full: too few cases in flight to keep it busy (Little's law)
            busiest = ("in flight", busiest[1])
        speedup = base / outcome.wall_s if outcome.wall_s else math.inf
        rows.append({"workers": outcome.workers, "wall_s": round(outcome.wall_s, 1),
                     "cases_per_s": round(costs.cases / outcome.wall_s, 1) if outcome.wall_s else math.inf,
                     "speedup": round(speedup, 2), "efficiency": round(speedup / outcome.workers, 2),
                     "planner_busy": round(outcome.planner_busy, 2), "worker_busy": round(outcome.worker_busy, 2),
                     "driver_busy": round(outcome.driver_busy, 2), "bound": busiest[0]})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in Costs.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default,
                            help=f"{field.description or name} (default {field.default})")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 64])
    arguments = vars(parser.parse_args(argv))
    workers = arguments.pop("workers")
    costs = Costs(**arguments)
    rows = table(costs, workers)
    print(f"{costs.cases} cases x {costs.calls} planner calls of {costs.latency_s:g} s; {costs.replicas} replicas x "
          f"{costs.slots} slots ({costs.replicas * costs.slots / costs.latency_s if costs.latency_s else math.inf:g}"
          f" calls/s); CPU/case {costs.client_cpu_ms:g} ms in-process, +{costs.ray_overhead_ms:g} ms on Ray "
          f"({costs.driver_cpu_ms:g} ms on the driver); {costs.in_flight} cases in flight")
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[key]) for key in header))


if __name__ == "__main__":
    main()
