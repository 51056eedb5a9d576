"""Cases of a study spread over worker processes of this machine (``executor: processes``).

One process runs a study's cases on one core: with hundreds in flight, their CPU-bound set-up (attach, the graph's
run, the request) goes one case after another, and the first wave of requests leaves a planner server idle for
that long. Worker processes (:mod:`medagent.studies.process_worker`) compute cases on the other cores. The driver
keeps everything a local run does: the run's row and lease, the bound on cases in flight, the progress events and
every write to the store, so resume semantics are those of a local run. Each worker holds an equal share of the
study's limits per planner endpoint and per expert (together exactly the limits), and sends its cases to the
worker with the fewest in flight. Workers share this machine's files: each attaches its cases' images itself,
into the same artifact store under the same de-identification key, so the ids are those of a local run.

A worker that dies fails the cases it had in flight; each is sent once more, to a worker still alive, and recorded
with ``attempts = 2``; a second loss records the case as failed (``worker_lost``). Each worker loads its own
experts: share a GPU model between workers by serving it (``medagent expert serve``) and naming it remotely.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medagent.errors import ConfigurationError, InfrastructureError
from medagent.studies.config import ConcurrencySpec
from medagent.studies.process_worker import MAX_FRAME_BYTES, frame, read_frame
from medagent.studies.ray_executor import WorkerLost

if TYPE_CHECKING:
    from medagent.studies.runner import CaseOutcome, StudyRunner, _WorkItem

logger = logging.getLogger(__name__)
WORKER_START_TIMEOUT_S = 120.0  # importing medagent and building a runner on a busy machine


class WorkersUnavailable(InfrastructureError):
    """A worker process did not start (its error is on standard error)."""

    code = "workers_unavailable"


class LimitsTooSmall(ConfigurationError):
    """A limit is smaller than the number of worker processes that share it."""

    code = "limits_too_small_for_workers"


def shared_limits(limits: ConcurrencySpec, workers: int, index: int) -> ConcurrencySpec:
    """Worker ``index``'s share of the limits: an equal split whose shares add up to exactly each limit."""

    def share(limit: int, what: str) -> int:
        part = limit // workers + (index < limit % workers)
        if part < 1:
            raise LimitsTooSmall(f"{what} is {limit}, fewer than the {workers} worker processes that share it; "
                                 f"raise it or set executor.workers to at most {limit}", limit=limit, workers=workers)
        return part

    per_expert: int | dict[str, int] | None = limits.per_expert
    if isinstance(per_expert, int):
        per_expert = share(per_expert, "concurrency.per_expert")
    elif per_expert is not None:
        per_expert = {tool: share(limit, f"concurrency.per_expert.{tool}") for tool, limit in per_expert.items()}
    return limits.model_copy(update={
        "cases": max(1, limits.cases // workers + (index < limits.cases % workers)),
        "per_planner_endpoint": share(limits.per_planner_endpoint, "concurrency.per_planner_endpoint"),
        "per_expert": per_expert})


@dataclass(eq=False)
class _Worker:
    process: asyncio.subprocess.Process
    pid: int = 0
    in_flight: int = 0
    waiting: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None


class ProcessCases:
    def __init__(self, runner: StudyRunner) -> None:
        self._runner = runner
        self._workers: list[_Worker] = []  # alive: cases go to these
        self._started: list[_Worker] = []  # every process started, reaped when the run ends
        self._numbers = itertools.count()
        self._turn = itertools.count()

    @classmethod
    async def open(cls, runner: StudyRunner) -> ProcessCases:
        """Start the study's worker processes; refusals (limits too small to share) come first."""
        config = runner.config
        count = config.executor.workers or os.cpu_count() or 1
        configs = [config.model_copy(update={"concurrency": shared_limits(config.concurrency, count, index)})
                   for index in range(count)]
        cases = cls(runner)
        starting = [asyncio.ensure_future(cases._start(worker_config)) for worker_config in configs]
        try:
            await asyncio.gather(*starting)
        except BaseException:  # one failed or the run was cancelled: none is left starting, every one is stopped
            for start in starting:
                start.cancel()
            await asyncio.gather(*starting, return_exceptions=True)
            await cases.aclose()
            raise
        return cases

    async def _start(self, config: Any) -> None:
        # the driver's import path, so a study's own tool modules resolve in the worker as they did here; a session
        # of its own, so a Ctrl-C in the terminal reaches the driver only, which then closes the workers
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "medagent.studies.process_worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=MAX_FRAME_BYTES, env=environment, start_new_session=True)
        worker = _Worker(process)
        self._started.append(worker)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(frame((config, self._runner.store.connect_url(), self._runner.settings)))
        try:
            ready = await asyncio.wait_for(read_frame(process.stdout), WORKER_START_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if not ready or ready[0] != "ready":
            raise WorkersUnavailable("a case worker process did not start (its error is on standard error)")
        worker.pid = ready[1]
        self._workers.append(worker)
        worker.reader = asyncio.create_task(self._read(worker))

    async def _read(self, worker: _Worker) -> None:
        """The worker's answers to their cases; at its end (it died), its cases in flight are lost."""
        assert worker.process.stdout is not None
        try:
            while (message := await read_frame(worker.process.stdout)) is not None:
                kind, number, payload = message
                waiting = worker.waiting.pop(number, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result((kind, payload))
        except Exception as exc:  # noqa: BLE001 - a frame that cannot be read: the worker's stream is of no more use
            logger.warning("case worker %d sent what cannot be read (%s)", worker.pid, type(exc).__name__)
        finally:
            if worker in self._workers:
                self._workers.remove(worker)
            for waiting in worker.waiting.values():
                if not waiting.done():
                    waiting.set_result(("lost", None))
            worker.waiting.clear()

    def _least_loaded(self) -> _Worker:
        """The worker with the fewest cases in flight; ties take turns."""
        start = next(self._turn) % len(self._workers)
        return min(self._workers[start:] + self._workers[:start], key=lambda worker: worker.in_flight)

    async def run_case(self, run_id: str, item: _WorkItem) -> CaseOutcome:
        from medagent.studies.runner import CaseOutcome

        for attempt in (1, 2):
            if not self._workers:
                raise WorkerLost("every case worker process of this run is gone; resume the run")
            worker = self._least_loaded()
            number = next(self._numbers)
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            worker.waiting[number] = answer
            worker.in_flight += 1
            try:
                assert worker.process.stdin is not None
                worker.process.stdin.write(frame(("case", number, run_id, item)))
                kind, payload = await answer
            finally:
                worker.in_flight -= 1
                worker.waiting.pop(number, None)
            if kind == "done":
                result, messages, calls = payload
                return CaseOutcome(result, messages, calls, attempt, f"pid-{worker.pid}")
            if kind == "failed":
                error = InfrastructureError(f"the case failed in its worker process ({payload})")
                return CaseOutcome(self._runner.failed_result(item, error), [], [], attempt, f"pid-{worker.pid}")
            logger.warning("case worker process %d lost: its cases run again in another", worker.pid)
        lost = WorkerLost("the case's worker process died twice", case=item.key)
        return CaseOutcome(self._runner.failed_result(item, lost), [], [], 2, None)

    async def aclose(self) -> None:
        """Stop the workers: asked to close, then killed if they have not ended within 30 s."""
        workers = list(self._started)
        for worker in workers:
            if worker.process.stdin is not None and not worker.process.stdin.is_closing():
                worker.process.stdin.write(frame(("close",)))
                worker.process.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 30)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                await asyncio.gather(worker.reader, return_exceptions=True)
        self._workers.clear()
        self._started.clear()
