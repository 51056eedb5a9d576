"""Operational statistics of a run: tool usage, planner tokens, failures by error code, case latency."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel


class ToolUsage(BaseModel):
    tool: str
    calls: int
    failures: int
    failure_rate: float | None
    latency_median_s: float | None
    latency_p90_s: float | None
    error_codes: dict[str, int]


class TokenUsage(BaseModel):
    """Planner tokens; "per case" means per (case, repeat) row with a known count."""

    prompt_total: int
    completion_total: int
    total: int
    cases_counted: int
    per_case_mean: float | None
    per_case_median: float | None
    per_case_max: int | None


class FailureCount(BaseModel):
    error_code: str
    count: int


class CaseOutcomes(BaseModel):
    observations: int
    cases: int
    succeeded: int
    failed: int
    latency_median_s: float | None
    latency_p90_s: float | None
    failures: list[FailureCount]


def _quantile(values: np.ndarray, q: float) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.quantile(values, q)) if values.size else None


def tool_usage(tool_calls: pd.DataFrame) -> list[ToolUsage]:
    """Calls, failures, failure rate and duration median/p90 per tool, sorted by tool name."""
    out: list[ToolUsage] = []
    for tool, calls in tool_calls.groupby("tool", sort=True):
        failed = calls[~calls["ok"].astype(bool)]
        durations = pd.to_numeric(calls["duration_s"]).to_numpy(dtype=float)
        codes = failed["error_code"].astype("object").where(failed["error_code"].notna(), "unknown").astype(str)
        out.append(ToolUsage(
            tool=str(tool), calls=len(calls), failures=len(failed),
            failure_rate=len(failed) / len(calls) if len(calls) else None,
            latency_median_s=_quantile(durations, 0.5), latency_p90_s=_quantile(durations, 0.9),
            error_codes={str(k): int(v) for k, v in codes.value_counts().sort_index().items()},
        ))
    return out


def token_usage(cases: pd.DataFrame) -> TokenUsage:
    """Planner token totals over all rows, and per-row statistics over rows where both counts are known."""
    prompt = pd.to_numeric(cases["prompt_tokens"]).to_numpy(dtype=float)
    completion = pd.to_numeric(cases["completion_tokens"]).to_numpy(dtype=float)
    known = np.isfinite(prompt) & np.isfinite(completion)
    per_case = prompt[known] + completion[known]
    prompt_total, completion_total = int(np.nansum(prompt)), int(np.nansum(completion))
    return TokenUsage(
        prompt_total=prompt_total, completion_total=completion_total, total=prompt_total + completion_total,
        cases_counted=int(known.sum()),
        per_case_mean=float(per_case.mean()) if per_case.size else None,
        per_case_median=float(np.median(per_case)) if per_case.size else None,
        per_case_max=int(per_case.max()) if per_case.size else None,
    )


def tokens_per_case(cases: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, case_id, repeat) with prompt, completion and total tokens (for export)."""
    frame = cases[["run_id", "case_id", "repeat", "prompt_tokens", "completion_tokens"]].copy()
    frame["total_tokens"] = frame["prompt_tokens"] + frame["completion_tokens"]
    return frame.reset_index(drop=True)


def case_outcomes(cases: pd.DataFrame) -> CaseOutcomes:
    """Succeeded/failed counts (per row), failures by error code (most frequent first), case latency."""
    failed = cases[cases["status"] == "failed"]
    codes = failed["error_code"].astype("object").where(failed["error_code"].notna(), "unknown").astype(str)
    counts = codes.value_counts()
    failures = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    latency = pd.to_numeric(cases["latency_s"]).to_numpy(dtype=float)
    return CaseOutcomes(
        observations=len(cases), cases=int(cases["case_id"].nunique()), succeeded=len(cases) - len(failed),
        failed=len(failed), latency_median_s=_quantile(latency, 0.5), latency_p90_s=_quantile(latency, 0.9),
        failures=[FailureCount(error_code=k, count=v) for k, v in failures],
    )
