"""Batched case writes: StudyStore.record_cases and the runner's CaseWrites, on a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from medagent.store import CaseEntry, CaseError, CaseResult, StoreError, StudyStore
from medagent.studies.case_writes import CaseWrites
from medagent.studies.runner import CaseOutcome

MESSAGES = [{"role": "user", "content": "Describe the image."}, {"role": "assistant", "content": "Clear lungs."}]


def _result(status: str = "succeeded") -> CaseResult:
    error = CaseError(code="planner_timeout", family="infrastructure", message="late") if status == "failed" else None
    return CaseResult(status=status, answer="Clear lungs." if error is None else None, error=error, seed=0)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with StudyStore.open(None, tmp_path) as opened:
        opened.create_run("run", "study", {"name": "study"}, "hash")
        yield opened


def test_record_cases_writes_each_case_whole_once_and_retries_only_failed_ones(store: StudyStore) -> None:
    written = store.record_cases("run", [CaseEntry("a", 0, _result(), MESSAGES), CaseEntry("b", 0, _result("failed")),
                                         CaseEntry("c", 1, _result(), MESSAGES, attempts=2)])
    assert [(w.record.case_id, w.record.repeat, w.record.status, w.written) for w in written] == [
        ("a", 0, "succeeded", True), ("b", 0, "failed", True), ("c", 1, "succeeded", True)]
    assert store.get_case("run", "c", 1).attempts == 2  # type: ignore[union-attr]
    again = store.record_cases("run", [CaseEntry("a", 0, _result("failed")), CaseEntry("b", 0, _result())])
    assert [(w.record.status, w.written) for w in again] == [("succeeded", False), ("failed", False)]
    retried = store.record_cases("run", [CaseEntry("a", 0, _result("failed")), CaseEntry("b", 0, _result(), MESSAGES)],
                                 retry=True)
    assert [(w.record.status, w.written) for w in retried] == [("succeeded", False), ("succeeded", True)]
    assert store.get_case("run", "b", 0).attempts == 2  # type: ignore[union-attr]
    assert [case.case_id for case in store.cases("run")] == ["a", "b", "c"]
    with pytest.raises(StoreError):  # refused before anything is written: all or none
        store.record_cases("run", [CaseEntry("d", 0, _result()), CaseEntry("e", -1, _result())])
    assert store.get_case("run", "d", 0) is None


class CountingStore(StudyStore):
    batches: list[int]

    def record_cases(self, run_id: str, cases: Any, *, retry: bool = False) -> Any:
        self.batches.append(len(cases))
        return super().record_cases(run_id, cases, retry=retry)


@pytest.mark.asyncio
async def test_cases_finishing_together_are_written_together_and_a_refused_one_fails_alone(tmp_path: Path) -> None:
    with CountingStore.open(None, tmp_path) as store:
        assert isinstance(store, CountingStore)
        store.batches = []
        store.create_run("run", "study", {"name": "study"}, "hash")
        writes = CaseWrites(store, "run", retry=False)
        futures = [writes.submit(f"case-{index}", 0, CaseOutcome(_result(), MESSAGES, [])) for index in range(20)]
        futures.append(writes.submit("bad", -1, CaseOutcome(_result(), [], [])))
        futures.append(writes.submit("last", 0, CaseOutcome(_result("failed"), [], [])))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert store.batches[0] == 22  # one transaction tried for the burst; refused, then each case alone
        assert isinstance(outcomes[20], StoreError)
        assert [o.record.status for o in outcomes if not isinstance(o, BaseException)] == ["succeeded"] * 20 + ["failed"]
        assert len(store.cases("run")) == 21
        assert len(store.messages("run", "case-3", 0)) == 2
        store.batches.clear()
        later = [writes.submit(f"later-{index}", 0, CaseOutcome(_result(), [], [])) for index in range(3)]
        assert [w.written for w in await asyncio.gather(*later)] == [True] * 3
        assert store.batches == [3]
