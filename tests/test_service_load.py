"""A small service load with a restart in the middle: sessions asking at once over Server-Sent Events against
``medagent serve`` in a process of its own, SIGTERM while turns are in flight, the service started again on the
same home. No finished turn may be lost or repeated, and every session goes on. Timing goals are
benchmarks/bench_service_load.py's, not this test's."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from benchmarks.service_clients import FOLLOW_UP, LoadReport, ServiceLoad, in_history
from benchmarks.service_load import ServedProcess, TurnRecord, create_key, image_bytes, question

SESSIONS, TURNS, LATENCY_S = 8, 3, 0.5


async def _load_then_recover_cut_turns(load: ServiceLoad) -> tuple[LoadReport, list[TurnRecord], int]:
    """The load; then, on the restarted service, two turns as if their streams had been cut: one that had
    finished (its answer must come from the history, not from asking again) and one never asked; and how often
    the finished one's question is in the history afterwards."""
    report = await load.run()
    session_id, finished = report.session_ids[0], report.records[0]
    cut = [TurnRecord(0, TURNS, finished.question, recovered="cut"),
           TurnRecord(0, TURNS + 1, question(0, TURNS + 1), recovered="cut")]
    async with load.connect() as load.client:
        for record in cut:
            await load.recover(session_id, record)
        count, _answer = in_history(await load.history(session_id), finished.question)
    return report, cut, count


def test_a_restart_in_the_middle_of_a_load_loses_and_repeats_no_finished_turn_and_sessions_go_on(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = create_key(home)
    with ServedProcess(home, latency_s=LATENCY_S, grace_s=20) as served:
        load = ServiceLoad(served, token, image_bytes(), sessions=SESSIONS, turns=TURNS,
                           restart_at=SESSIONS * TURNS // 2)  # in the middle of the second round
        report, cut, asked_times = asyncio.run(_load_then_recover_cut_turns(load))
    restart = report.restart
    assert restart is not None and served.starts == 2
    assert restart.exit_status == -signal.SIGTERM, "uvicorn shut down gracefully and re-raised the signal"
    records = {(record.session, record.turn): record for record in report.records}
    assert sorted(records) == [(s, t) for s in range(SESSIONS) for t in range(TURNS)]
    unanswered = [(record.session, record.turn, record.error) for record in report.records
                  if record.answer is None or record.error is not None]
    assert unanswered == []
    # the turns in flight when the signal came (this one for sure) finished, in one go, during the shutdown
    assert restart.down_s is not None
    assert records[restart.record].recovered is None and records[restart.record].in_order
    drained = [record for record in report.records if record.recovered is None and record.answered_at is not None
               and restart.signalled_at < record.answered_at < restart.signalled_at + restart.down_s]
    assert records[restart.record] in drained and all(record.in_order for record in drained)
    # the history, read through the API of the new process: every turn once, in order, with the answer seen
    assert report.problems == []
    assert report.continued == SESSIONS
    assert all(record.in_order for record in report.records if record.recovered is None)
    assert {record.recovered for record in report.records} <= {None, "resumed", "finished", "re-asked"}
    # a cut turn that had finished is taken from the history, not asked twice; one never asked is asked now
    assert (cut[0].recovered, cut[0].answer, cut[0].error) == ("finished", report.records[0].answer, None)
    assert asked_times == 1
    assert cut[1].recovered == "re-asked" and cut[1].answer and cut[1].in_order


class _KnownHistory(ServiceLoad):
    """The history check on a history given here (no service)."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        super().__init__(ServedProcess(Path("unused"), latency_s=0, grace_s=0), "unused", b"", sessions=1, turns=2,
                         restart_at=None)
        self.messages = messages

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        return self.messages


def test_the_history_check_sees_a_lost_a_repeated_and_a_changed_turn() -> None:
    asked = [question(0, 0), question(0, 1)]
    seen = [TurnRecord(0, 0, asked[0], answer="first answer"), TurnRecord(0, 1, asked[1], answer="second answer")]
    intact: list[dict[str, Any]] = [
        {"role": "user", "content": asked[0]}, {"role": "assistant", "content": "", "tool_calls": [{}]},
        {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": asked[1]}, {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": FOLLOW_UP}, {"role": "assistant", "content": "more"}]
    assert in_history(intact, asked[0]) == (1, "first answer")
    assert asyncio.run(_KnownHistory(intact).check(0, "id", seen)) == []
    lost = intact[:4] + intact[6:]
    assert any("(lost)" in problem for problem in asyncio.run(_KnownHistory(lost).check(0, "id", seen)))
    repeated = intact[:4] + intact[:4] + intact[4:]
    assert any("2 times" in problem for problem in asyncio.run(_KnownHistory(repeated).check(0, "id", seen)))
    changed = [*intact[:5], {"role": "assistant", "content": "another answer"}, *intact[6:]]
    assert asyncio.run(_KnownHistory(changed).check(0, "id", seen)) == [
        "session 0 turn 1: the history's answer is not the one seen"]
