"""Between typed records and table rows: the values a case row is written with, and rows read back as records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import RowMapping

from medagent.store.engine import git_sha, medagent_version
from medagent.store.records import (
    CaseError,
    CaseRecord,
    CaseResult,
    MetricValue,
    RunRecord,
    StoredToolCall,
    StoreError,
    now,
    utc,
)


def run_record(row: RowMapping) -> RunRecord:
    return RunRecord(run_id=row["run_id"], study=row["study"], config=row["config"] or {},
                     config_hash=row["config_hash"], medagent_version=row["medagent_version"],
                     git_sha=row["git_sha"], status=row["status"], created_at=utc(row["created_at"]),
                     finished_at=utc(row["finished_at"]))


def case_record(row: RowMapping) -> CaseRecord:
    return CaseRecord(
        run_id=row["run_id"], case_id=row["case_id"], repeat=row["repeat"], status=row["status"],
        answer=row["answer"], result=row["result"],
        error=CaseError.model_validate(row["error"]) if row["error"] else None,
        columns=row["columns"] or {}, seed=row["seed"], model_id=row["model_id"],
        expert_weights=row["expert_weights"] or {}, prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], latency_s=row["latency_s"], started_at=utc(row["started_at"]),
        finished_at=utc(row["finished_at"]), attempts=row["attempts"], config_hash=row["config_hash"],
        medagent_version=row["medagent_version"], git_sha=row["git_sha"], recorded_at=utc(row["recorded_at"]))


def stored_tool_call(row: RowMapping) -> StoredToolCall:
    return StoredToolCall(
        run_id=row["run_id"], case_id=row["case_id"], repeat=row["repeat"], position=row["position"],
        tool=row["tool"], call_id=row["call_id"], arguments=row["arguments"] or {}, output=row["output"],
        ok=bool(row["ok"]),
        error=CaseError.model_validate(row["error"]) if row["error"] else None, duration_s=row["duration_s"],
        started_at=utc(row["started_at"]))


def metric_value(row: RowMapping) -> MetricValue:
    return MetricValue(name=row["name"], value=row["value"], case_id=row["case_id"], repeat=row["repeat"],
                       details=row["details"] or {})


def require_text(**values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value:
            raise StoreError(f"{name} must be a non-empty string")


def case_values(result: CaseResult, run: RunRecord) -> dict[str, Any]:
    """The columns a case row takes from a result, with the run's provenance."""
    return {"status": result.status, "answer": result.answer, "result": result.result,
            "error": result.error.model_dump(mode="json") if result.error else None,
            "error_code": result.error.code if result.error else None, "columns": result.columns,
            "seed": result.seed, "model_id": result.model_id, "expert_weights": result.expert_weights,
            "config_hash": run.config_hash, "medagent_version": medagent_version(), "git_sha": git_sha(),
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "latency_s": result.latency_s, "started_at": result.started_at, "finished_at": result.finished_at,
            "recorded_at": now()}
