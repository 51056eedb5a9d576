"""The study store behaves the same on SQLite and PostgreSQL: atomic, idempotent, crash-safe writes."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

import medagent
from medagent.errors import PreconditionFailed, WeightsUnavailable
from medagent.store import (
    SCHEMA_VERSION,
    CaseError,
    CaseResult,
    ConfigChanged,
    MetricValue,
    RunExists,
    StoreSchemaMismatch,
    StudyStore,
    ToolCallRecord,
    UnknownRun,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HASH_A, HASH_B = "a" * 64, "b" * 64


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(store_url: str | None, home: Path) -> Iterator[StudyStore]:
    with StudyStore.open(store_url, home) as opened:
        yield opened


def _tool_call(index: int, ok: bool = True) -> ToolCallRecord:
    if ok:
        return ToolCallRecord(tool="classify_cxr", arguments={"image_id": f"img-{index}"},
                              output={"probabilities": {"Cardiomegaly": 0.25 + index / 100}}, ok=True,
                              duration_s=0.5 + index)
    error = CaseError.from_exception(PreconditionFailed("classify_cxr needs a 2D chest X-ray, got CT"))
    return ToolCallRecord(tool="classify_cxr", arguments={"image_id": "ct-1"}, ok=False, error=error, duration_s=0.01)


def _succeeded(answer: str = "cardiomegaly", seed: int = 7) -> CaseResult:
    start = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    return CaseResult(status="succeeded", answer=answer, result={"findings": ["Cardiomegaly"]}, seed=seed,
                      model_id="SmolLM2-360M-Instruct-Q8_0.gguf", expert_weights={"cxr_classifier": "f" * 64},
                      columns={"truth.Cardiomegaly": 1, "prob.Cardiomegaly": 0.8, "subgroup.sex": "F"},
                      prompt_tokens=120, completion_tokens=30, latency_s=2.5, started_at=start,
                      finished_at=start + timedelta(seconds=2.5))


def _failed() -> CaseResult:
    return CaseResult(status="failed", error=CaseError.from_exception(WeightsUnavailable("weights missing")), seed=7)


MESSAGES = [{"role": "user", "content": "Is the heart enlarged?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "classify_cxr"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"Cardiomegaly\": 0.8}"},
            {"role": "assistant", "content": "Cardiomegaly is likely."}]


def test_runs_are_created_once_resumed_only_with_the_same_configuration(store: StudyStore) -> None:
    run = store.create_run("run-1", "cxr-triage", {"planner": "scripted", "repeats": 1}, HASH_A)
    assert (run.status, run.config, run.medagent_version) == ("running", {"planner": "scripted", "repeats": 1},
                                                              medagent.__version__)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert run.git_sha == (head.stdout.strip() if head.returncode == 0 else None)
    assert run.created_at is not None and run.created_at.tzinfo is not None
    with pytest.raises(RunExists, match="run-1"):
        store.create_run("run-1", "other", {}, HASH_B)
    assert store.get_run("run-1") == run and store.get_run("missing") is None
    finished = store.finish_run("run-1")
    assert finished.status == "finished" and finished.finished_at is not None
    with pytest.raises(ConfigChanged):
        store.resume_run("run-1", {"planner": "other"}, HASH_B)
    assert store.resume_run("run-1", run.config, HASH_A).status == "running"
    forced = store.resume_run("run-1", {"planner": "other"}, HASH_B, force=True)
    assert (forced.config_hash, forced.config, forced.finished_at) == (HASH_B, {"planner": "other"}, None)
    # cases written after a forced resume carry the configuration that produced them
    assert store.record_case("run-1", "c", 0, _succeeded()).record.config_hash == HASH_B
    with pytest.raises(UnknownRun):
        store.record_case("missing", "c", 0, _succeeded())
    with pytest.raises(UnknownRun):
        store.finish_run("missing")
    assert [r.run_id for r in store.runs()] == ["run-1"]


def test_a_case_round_trips_with_messages_tool_calls_and_provenance(store: StudyStore) -> None:
    store.create_run("run", "study", {}, HASH_A)
    result = _succeeded()
    calls = [_tool_call(0), _tool_call(1, ok=False), _tool_call(2)]
    write = store.record_case("run", "case-1", 0, result, MESSAGES, calls)
    assert write.written
    stored = store.get_case("run", "case-1", 0)
    assert stored == write.record and stored is not None
    assert stored.model_dump(include=set(CaseResult.model_fields)) == result.model_dump()
    assert (stored.attempts, stored.config_hash, stored.medagent_version) == (1, HASH_A, medagent.__version__)
    assert store.messages("run", "case-1", 0) == MESSAGES
    read_calls = store.tool_calls("run")
    assert [c.model_dump(include=set(ToolCallRecord.model_fields)) for c in read_calls] == [
        c.model_dump() for c in calls]
    assert [(c.position, c.error_code) for c in read_calls] == [(0, None), (1, "precondition_failed"), (2, None)]
    assert read_calls[1].error is not None and read_calls[1].error.family == "tool_failure"
    failed = store.record_case("run", "case-2", 0, _failed()).record
    assert failed.error is not None and (failed.error.code, failed.error.family) == ("weights_unavailable",
                                                                                     "infrastructure")
    assert store.counts("run") == {"cases": 2, "messages": 4, "tool_calls": 3, "metrics": 0}
    assert store.completed_keys("run") == {("case-1", 0)} and store.failed_keys("run") == {("case-2", 0)}
    assert store.recorded_keys("run") == {("case-1", 0), ("case-2", 0)}
    assert [c.case_id for c in store.cases("run", status="failed")] == ["case-2"]


def test_results_must_be_consistent() -> None:
    with pytest.raises(ValidationError, match="typed error"):
        CaseResult(status="failed")
    with pytest.raises(ValidationError, match="carries no error"):
        CaseResult(status="succeeded", error=CaseError(code="x", family="retry", message="m"))
    with pytest.raises(ValidationError, match="carries no error"):
        ToolCallRecord(tool="t", ok=True, error=CaseError(code="x", family="retry", message="m"))
    # an unexpected exception is recorded by type only: its text may quote inputs
    assert CaseError.from_exception(ValueError("/data/patient-42.dcm")).message == "ValueError"
    assert CaseResult(status="succeeded", columns={"prob.x": float("nan")}).columns == {"prob.x": None}


def test_writes_are_idempotent_and_only_failed_cases_are_retried(store: StudyStore) -> None:
    store.create_run("run", "study", {}, HASH_A)
    first = store.record_case("run", "case", 0, _succeeded("first"), MESSAGES, [_tool_call(0)])
    again = store.record_case("run", "case", 0, _succeeded("second"), MESSAGES[:1], [], retry=True)
    assert not again.written and again.record == first.record and again.record.answer == "first"
    store.record_case("run", "case", 1, _failed(), MESSAGES[:2], [_tool_call(0, ok=False)])
    assert not store.record_case("run", "case", 1, _succeeded("late")).written  # without retry: kept
    assert store.get_case("run", "case", 1).status == "failed"  # type: ignore[union-attr]
    retried = store.record_case("run", "case", 1, _succeeded("retried"), MESSAGES[:3], [_tool_call(5)], retry=True)
    assert retried.written and (retried.record.status, retried.record.attempts) == ("succeeded", 2)
    assert store.messages("run", "case", 1) == MESSAGES[:3]
    assert [c.arguments for c in store.tool_calls("run", "case", 1)] == [{"image_id": "img-5"}]
    assert store.counts("run") == {"cases": 2, "messages": 7, "tool_calls": 2, "metrics": 0}
    assert store.failed_keys("run") == set() and store.completed_keys("run") == {("case", 0), ("case", 1)}


def test_concurrent_writers_leave_exactly_one_row_per_key(store: StudyStore) -> None:
    store.create_run("run", "study", {}, HASH_A)
    shared = [(f"shared-{i}", 0) for i in range(6)]
    start = threading.Barrier(6)

    def write(worker: int) -> list[tuple[tuple[str, int], bool]]:
        start.wait()
        keys = shared + [(f"own-{worker}-{i}", i % 2) for i in range(4)]
        random.Random(worker).shuffle(keys)
        return [((case_id, repeat), store.record_case("run", case_id, repeat, _succeeded(f"w{worker}"), MESSAGES,
                                                      [_tool_call(worker)]).written) for case_id, repeat in keys]

    with ThreadPoolExecutor(6) as pool:
        outcomes = [item for result in pool.map(write, range(6)) for item in result]
    written = Counter(key for key, did_write in outcomes if did_write)
    assert len(outcomes) == 6 * 10 and set(written.values()) == {1} and len(written) == 6 + 6 * 4
    assert store.counts("run") == {"cases": 30, "messages": 30 * len(MESSAGES), "tool_calls": 30, "metrics": 0}
    # many threads retrying one failed case: exactly one replaces it
    store.record_case("run", "flaky", 0, _failed())
    with ThreadPoolExecutor(6) as pool:
        retried = list(pool.map(lambda w: store.record_case("run", "flaky", 0, _succeeded(f"w{w}"), MESSAGES[:1],
                                                            retry=True), range(6)))
    assert sum(w.written for w in retried) == 1
    assert {w.record.answer for w in retried} == {next(w.record.answer for w in retried if w.written)}
    assert store.get_case("run", "flaky", 0).attempts == 2  # type: ignore[union-attr]
    assert len(store.messages("run", "flaky", 0)) == 1


def test_metrics_are_upserted_per_run_and_per_case(store: StudyStore) -> None:
    store.create_run("run", "study", {}, HASH_A)
    store.add_metrics("run", [MetricValue(name="accuracy", value=0.5), MetricValue(name="latency_s", value=1.5,
                                                                                   case_id="c", repeat=0)])
    store.add_metrics("run", [MetricValue(name="accuracy", value=0.75, details={"ci": [0.6, 0.9]})])
    assert {(m.name, m.case_id, m.value) for m in store.metrics("run")} == {("accuracy", None, 0.75),
                                                                          ("latency_s", "c", 1.5)}
    assert next(m for m in store.metrics("run") if m.name == "accuracy").details == {"ci": [0.6, 0.9]}
    with pytest.raises(ValidationError):
        MetricValue(name="x", value=1.0, case_id="c")
    with pytest.raises(UnknownRun):
        store.add_metrics("missing", [MetricValue(name="x", value=1.0)])


def test_frames_follow_the_reports_contract(store: StudyStore) -> None:
    from medagent.reports.schema import validate_cases, validate_tool_calls

    store.create_run("run", "study", {}, HASH_A)
    store.record_case("run", "a", 0, _succeeded(), MESSAGES, [_tool_call(0), _tool_call(1, ok=False)])
    store.record_case("run", "b", 0, _failed())
    cases = store.cases_frame("run")
    layout = validate_cases(cases)
    assert layout.findings == ["Cardiomegaly"] and layout.subgroups == ["sex"]
    assert list(cases["status"]) == ["succeeded", "failed"]
    assert list(cases["error_code"].fillna("-")) == ["-", "weights_unavailable"]
    assert cases["prob.Cardiomegaly"].iloc[0] == 0.8 and cases["prob.Cardiomegaly"].isna().iloc[1]
    calls = store.tool_calls_frame("run")
    validate_tool_calls(calls)
    assert list(calls["ok"]) == [True, False] and list(calls["error_code"].fillna("-")) == ["-", "precondition_failed"]


def test_schema_version_is_recorded_and_checked(store_url: str | None, home: Path) -> None:
    from sqlalchemy import text

    with StudyStore.open(store_url, home) as store:
        store.create_run("run", "study", {}, HASH_A)
        with store._transaction(write=True) as connection:  # noqa: SLF001 - simulate a store from the future
            assert connection.execute(text("SELECT version FROM study_schema_version")).scalar_one() == SCHEMA_VERSION
            connection.execute(text("UPDATE study_schema_version SET version = 999"))
    with pytest.raises(StoreSchemaMismatch, match="999"):
        StudyStore.open(store_url, home)


def test_a_version_1_store_is_migrated_and_keeps_tool_call_records_as_made(store_url: str | None,
                                                                          home: Path) -> None:
    """A store written before tool calls carried their call id opens, keeps its rows, and then stores
    every field of a call record; the record read back equals the one written."""
    from sqlalchemy import text

    with StudyStore.open(store_url, home) as store:
        store.create_run("run", "study", {}, HASH_A)
        store.record_case("run", "old", 0, _succeeded(), [], [_tool_call(1)])
        with store._transaction(write=True) as connection:  # turn it into a version-1 store
            connection.execute(text("ALTER TABLE study_tool_calls DROP COLUMN call_id"))
            connection.execute(text("UPDATE study_schema_version SET version = 1"))
    with StudyStore.open(store_url, home) as store:
        assert [c.call_id for c in store.tool_calls("run", "old", 0)] == [None]
        call = _tool_call(2).model_copy(update={"call_id": "ground:Mass",
                                                "started_at": datetime(2025, 3, 1, 12, 0, tzinfo=UTC)})
        store.record_case("run", "new", 0, _succeeded(), [], [call])
        stored = store.tool_calls("run", "new", 0)[0]
        assert ToolCallRecord.model_validate(stored.model_dump(include=set(ToolCallRecord.model_fields))) == call
        with store._transaction() as connection:
            assert connection.execute(text("SELECT version FROM study_schema_version")).scalar_one() == 2


WRITER = """
import sys, time
from pathlib import Path
from medagent.store import CaseResult, RunExists, StudyStore, ToolCallRecord
url, home, cases, stall = (sys.argv[1] or None), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stall"
store = StudyStore.open(url, home)
try:
    store.create_run("crash", "study", {}, "a" * 64)
except RunExists:
    pass
if stall:
    from sqlalchemy import event
    @event.listens_for(store._engine, "before_cursor_execute")
    def _stall(conn, cursor, statement, parameters, context, executemany):
        # the case row and its messages are written, its tool calls not yet: die here
        if statement.lstrip().upper().startswith("INSERT INTO STUDY_TOOL_CALLS"):
            print("MID-WRITE", flush=True)
            time.sleep(60)
done = store.recorded_keys("crash")
print("READY", flush=True)
for index in range(cases):
    if (f"case-{index}", 0) in done:
        continue
    n = index % 5 + 1
    messages = [{"role": "user", "content": "x" * 2000}] * n
    calls = [ToolCallRecord(tool="t", arguments={"i": i}, output={"blob": "y" * 2000}, ok=True) for i in range(n)]
    result = CaseResult(status="succeeded", answer=str(index), result={"n": n}, seed=index)
    if store.record_case("crash", f"case-{index}", 0, result, messages, calls).written:
        print(f"WROTE case-{index}", flush=True)
    time.sleep(0.01)  # the case's own work, so kills land at every stage of the loop
print("DONE", flush=True)
"""


def _writer(script: Path, store_url: str | None, home: Path, cases: int, stall: bool) -> subprocess.Popen[str]:
    arguments = [str(script), store_url or "", str(home), str(cases), "stall" if stall else "run"]
    return subprocess.Popen([sys.executable, *arguments], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _assert_whole_cases(store: StudyStore) -> set[str]:
    cases = store.cases("crash")
    assert len({c.key for c in cases}) == len(cases)
    for case in cases:
        n = case.result["n"]  # type: ignore[index]
        assert len(store.messages("crash", case.case_id, 0)) == n
        assert [c.position for c in store.tool_calls("crash", case.case_id, 0)] == list(range(n))
    counts = store.counts("crash")
    expected = sum(c.result["n"] for c in cases)  # type: ignore[index]
    assert (counts["messages"], counts["tool_calls"]) == (expected, expected)
    return {c.case_id for c in cases}


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_whole_cases(store_url: str | None, home: Path, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    total, wrote = 40, Counter[str]()
    rng = random.Random(5)
    # a kill inside the transaction: the case row and its messages are written, the tool calls not yet
    process = _writer(script, store_url, home, total, stall=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(2)]
    finally:
        process.kill()
        _, errors = process.communicate()
    assert lines == ["READY", "MID-WRITE"], errors[-2000:]
    with StudyStore.open(store_url, home) as store:
        assert store.get_case("crash", "case-0", 0) is None and _assert_whole_cases(store) == set()
    # kills after random delays, landing between and inside writes
    for delay in [rng.uniform(0.02, 0.15) for _ in range(3)]:
        process = _writer(script, store_url, home, total, stall=False)
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "READY"
            time.sleep(delay)
        finally:
            process.kill()
            output, _ = process.communicate()
        wrote.update(line.split()[1] for line in output.splitlines() if line.startswith("WROTE"))
        with StudyStore.open(store_url, home) as store:
            present = _assert_whole_cases(store)
        assert set(wrote) <= present
    assert 0 < len(present) < total  # the kills interrupted the run part-way
    process = _writer(script, store_url, home, total, stall=False)
    output, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors[-2000:]
    resumed = {line.split()[1] for line in output.splitlines() if line.startswith("WROTE")}
    assert resumed and not resumed & present  # the resume wrote only what was missing
    wrote.update(resumed)
    with StudyStore.open(store_url, home) as store:
        assert _assert_whole_cases(store) == {f"case-{i}" for i in range(total)}
        assert {c.attempts for c in store.cases("crash")} == {1}
    assert max(wrote.values()) == 1  # no case was computed and written twice


def test_sqlite_default_file_uses_wal_and_a_busy_timeout(home: Path) -> None:
    from sqlalchemy import text

    with StudyStore.open(None, home) as store:
        assert store.backend == "sqlite" and (home / "studies.sqlite").is_file()
        with store._transaction() as connection:  # noqa: SLF001 - inspect the connection settings
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() >= 10_000
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


def test_store_urls_are_checked_and_passwords_hidden(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from medagent.store import StoreError
    from medagent.store.engine import resolve_url

    assert resolve_url("postgresql://u:secret@db/x", tmp_path) == "postgresql+psycopg://u:secret@db/x"
    assert resolve_url("postgres://db/x", tmp_path) == "postgresql+psycopg://db/x"
    with pytest.raises(StoreError, match="mysql"):
        resolve_url("mysql://db/x", tmp_path)
    with pytest.raises(StoreError, match="in-memory"):
        resolve_url("sqlite://", tmp_path)
    with StudyStore.open(f"sqlite:///{tmp_path / 'other' / 'runs.db'}", tmp_path) as store:
        assert store.url.endswith("other/runs.db") and (tmp_path / "other" / "runs.db").is_file()
    hidden = StudyStore(create_engine("postgresql+psycopg://u:secret@127.0.0.1/x"))
    assert "secret" not in hidden.url
    hidden.close()


@pytest.mark.parametrize("kind", ["postgresql-refused", "sqlite-folder"])
def test_a_store_that_cannot_be_opened_is_a_typed_error_without_its_password(tmp_path: Path, kind: str) -> None:
    from medagent.store import StoreError

    (tmp_path / "a-folder.db").mkdir()
    url = ("postgresql://u:secret-pw@127.0.0.1:1/x" if kind == "postgresql-refused"  # nothing listens on port 1
           else f"sqlite:///{tmp_path / 'a-folder.db'}")
    with pytest.raises(StoreError) as caught:
        StudyStore.open(url, tmp_path)
    assert caught.value.code == "store_unavailable"
    assert "secret-pw" not in str(caught.value.to_dict()) and caught.value.__cause__ is None
