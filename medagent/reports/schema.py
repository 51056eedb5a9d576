"""The input contract of the reports: two plain pandas frames, validated with clear errors.

Reports never read the result store directly; the caller (the study runner) flattens
its rows into these frames, so metrics can be tested and reused without a database.

Cases frame: one row per ``(run_id, case_id, repeat)``

==========================  ==========================================================
column                      meaning
==========================  ==========================================================
run_id, case_id             strings (ids, never patient identifiers)
repeat                      integer repeat index (0 when a study has no repeats)
status                      ``succeeded`` or ``failed``
error_code                  the :mod:`medagent.errors` code of a failed case, else null
prompt_tokens               planner prompt tokens for the case (null when unknown)
completion_tokens           planner completion tokens for the case (null when unknown)
latency_s                   wall time of the case in seconds (null when unknown)
truth.<finding>             ground truth 0/1, NaN when unknown
prob.<finding>              predicted probability in [0, 1], NaN when absent
pred.<finding>              predicted label 0/1, NaN when absent
subgroup.<name>             subgroup value (age band, sex, site, ...); null = unknown
==========================  ==========================================================

Every finding with a ``truth.`` column needs a ``prob.`` or a ``pred.`` column.

Tool-calls frame: one row per tool call, columns :data:`TOOL_CALL_COLUMNS`
(``ok`` boolean, ``error_code`` null when ok, ``duration_s`` seconds).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
from pydantic import BaseModel

from medagent.errors import ConfigurationError

CASE_KEY_COLUMNS: Final = ("run_id", "case_id", "repeat")
CASE_COLUMNS: Final = (*CASE_KEY_COLUMNS, "status", "error_code", "prompt_tokens", "completion_tokens", "latency_s")
TOOL_CALL_COLUMNS: Final = ("run_id", "case_id", "repeat", "tool", "ok", "error_code", "duration_s")
CASE_STATUSES: Final = ("succeeded", "failed")
TRUTH_PREFIX: Final = "truth."
PROB_PREFIX: Final = "prob."
PRED_PREFIX: Final = "pred."
SUBGROUP_PREFIX: Final = "subgroup."
_NUMERIC_CASE_COLUMNS: Final = ("repeat", "prompt_tokens", "completion_tokens", "latency_s")


class ReportInputError(ConfigurationError):
    """A frame handed to the reports breaks the documented contract (a caller bug, not a data problem)."""

    code = "report_input"


class CasesLayout(BaseModel):
    """What a validated cases frame holds: findings (sorted) and which predictions each has."""

    findings: list[str]
    with_probability: list[str]
    with_label: list[str]
    subgroups: list[str]

    def has_probability(self, finding: str) -> bool:
        return finding in self.with_probability


def _suffixes(columns: pd.Index, prefix: str) -> list[str]:
    return sorted(str(c)[len(prefix) :] for c in columns if str(c).startswith(prefix))


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ReportInputError(f"the {name} frame must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportInputError(f"the {name} frame lacks the column(s) {', '.join(missing)}", frame=name)


def _require_numeric(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = frame[column].notna().to_numpy() & np.isnan(values)
    if bad.any():
        raise ReportInputError(f"column {column!r} of the {name} frame has {int(bad.sum())} non-numeric value(s)")
    return values


def _require_binary(frame: pd.DataFrame, column: str) -> None:
    values = _require_numeric(frame, column, "cases")
    known = values[~np.isnan(values)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ReportInputError(f"column {column!r} must hold 0, 1 or NaN")


def validate_cases(frame: pd.DataFrame) -> CasesLayout:
    """Check a cases frame against the contract; return its layout or raise :class:`ReportInputError`."""
    _require_columns(frame, CASE_COLUMNS, "cases")
    duplicated = frame.duplicated(list(CASE_KEY_COLUMNS))
    if duplicated.any():
        count = int(duplicated.sum())
        raise ReportInputError(f"the cases frame has {count} duplicated (run_id, case_id, repeat) key(s)")
    bad_status = ~frame["status"].isin(CASE_STATUSES)
    if bad_status.any():
        allowed, count = ", ".join(CASE_STATUSES), int(bad_status.sum())
        raise ReportInputError(f"column 'status' must be one of {allowed} ({count} bad)")
    for column in _NUMERIC_CASE_COLUMNS:
        _require_numeric(frame, column, "cases")
    truths = _suffixes(frame.columns, TRUTH_PREFIX)
    probs = _suffixes(frame.columns, PROB_PREFIX)
    labels = _suffixes(frame.columns, PRED_PREFIX)
    for finding in truths:
        _require_binary(frame, TRUTH_PREFIX + finding)
        if finding not in probs and finding not in labels:
            raise ReportInputError(f"finding {finding!r} has a truth column but neither a prob. nor a pred. column")
    for finding in probs:
        values = _require_numeric(frame, PROB_PREFIX + finding, "cases")
        known = values[~np.isnan(values)]
        if ((known < 0) | (known > 1)).any():
            raise ReportInputError(f"column {PROB_PREFIX + finding!r} must hold probabilities in [0, 1] or NaN")
    for finding in labels:
        _require_binary(frame, PRED_PREFIX + finding)
    return CasesLayout(
        findings=truths,
        with_probability=[f for f in truths if f in probs],
        with_label=[f for f in truths if f in labels],
        subgroups=_suffixes(frame.columns, SUBGROUP_PREFIX),
    )


def validate_tool_calls(frame: pd.DataFrame) -> None:
    """Check a tool-calls frame against the contract or raise :class:`ReportInputError`."""
    _require_columns(frame, TOOL_CALL_COLUMNS, "tool-calls")
    if not frame["ok"].isin((True, False)).all():
        raise ReportInputError("column 'ok' of the tool-calls frame must be boolean")
    _require_numeric(frame, "duration_s", "tool-calls")
    if frame["tool"].isna().any():
        raise ReportInputError("column 'tool' of the tool-calls frame has null names")


def empty_tool_calls() -> pd.DataFrame:
    """A valid tool-calls frame with no rows (for studies whose graph calls no tools)."""
    return pd.DataFrame({c: pd.Series(dtype="bool" if c == "ok" else "float" if c == "duration_s" else "object")
                         for c in TOOL_CALL_COLUMNS})
