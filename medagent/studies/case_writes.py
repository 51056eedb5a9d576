"""A run's finished cases written to its study store in batches.

Each write used to be a transaction of its own, handed to a thread of its own: at hundreds of cases in flight that
cost the runner about 2.8 ms of CPU per case (begin, the run's row read again, commit, a thread hand-off and the
GIL traffic of many writer threads). Here the cases that finish while a write is under way are written together by
the next one, in one transaction (:meth:`StudyStore.record_cases`), by one task. A case is still stored whole or
not at all, and its progress event still comes only after its write has committed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from medagent.store import CaseEntry, CaseWrite, StudyStore

if TYPE_CHECKING:
    from medagent.studies.runner import CaseOutcome

logger = logging.getLogger(__name__)

MAX_BATCH = 64  # cases per transaction: bounds how long one write holds the database's write lock
GATHER_S = 0.01  # how long a write waits for more cases to join it: a few ms on a case's progress, none on its work


class CaseWrites:
    """The writes of one run (``retry``: a stored failed case is replaced, as :meth:`StudyStore.record_case`)."""

    def __init__(self, store: StudyStore, run_id: str, *, retry: bool) -> None:
        self.store = store
        self.run_id = run_id
        self.retry = retry
        self._pending: list[tuple[CaseEntry, asyncio.Future[CaseWrite]]] = []
        self._writer: asyncio.Task[None] | None = None

    def submit(self, case_id: str, repeat: int, outcome: CaseOutcome) -> asyncio.Future[CaseWrite]:
        """Queue one case's write; the future is done once it committed (or failed, with the store's error)."""
        future: asyncio.Future[CaseWrite] = asyncio.get_running_loop().create_future()
        self._pending.append((CaseEntry(case_id, repeat, outcome.result, outcome.messages, outcome.calls,
                                        outcome.attempts), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())
        return future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(GATHER_S)  # cases finish in bursts (a server's batch): let the burst join this write
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._write(batch)
            finally:  # never leave a case waiting on a write that will not come (a cancelled writer, a bug)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(RuntimeError("the case's write did not finish"))

    async def _write(self, batch: list[tuple[CaseEntry, asyncio.Future[CaseWrite]]]) -> None:
        entries = [entry for entry, _ in batch]
        try:
            written = await asyncio.to_thread(self.store.record_cases, self.run_id, entries, retry=self.retry)
        except Exception:  # noqa: BLE001 - one case the store refuses must not fail the others: each alone
            logger.warning("a batch of %d case writes failed; writing each on its own", len(batch))
            for entry, future in batch:
                try:
                    future.set_result(await asyncio.to_thread(
                        self.store.record_case, self.run_id, entry.case_id, entry.repeat, entry.result,
                        entry.messages, entry.tool_calls, retry=self.retry, attempts=entry.attempts))
                except Exception as exc:  # noqa: BLE001 - the case's own write failed: its task raises it
                    future.set_exception(exc)
            return
        for (_, future), write in zip(batch, written, strict=True):
            future.set_result(write)
