"""pandas exports of a run, in the frame layout :mod:`medagent.reports.schema` documents.

Imported lazily by :class:`~medagent.store.study_store.StudyStore` so the store works without pandas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import pandas as pd

from medagent.runtime.untrained import weights_are_untrained
from medagent.store.records import CaseRecord, StoredToolCall

CASE_COLUMNS: Final = ("run_id", "case_id", "repeat", "status", "error_code", "prompt_tokens", "completion_tokens",
                       "latency_s")
PROVENANCE_COLUMNS: Final = ("attempts", "seed", "model_id", "config_hash", "medagent_version", "git_sha",
                             "answer")
# untrained: True when any expert of the case ran on random test-only weights (never read such rows as results)
WEIGHTS_COLUMNS: Final = ("untrained", "expert_weights")
TOOL_CALL_COLUMNS: Final = ("run_id", "case_id", "repeat", "position", "tool", "ok", "error_code", "duration_s")


def _weights_columns(case: CaseRecord) -> dict[str, object]:
    weights = case.expert_weights or {}
    return {"untrained": bool(weights_are_untrained(weights)),
            "expert_weights": json.dumps(weights, sort_keys=True) if weights else None}


def cases_frame(cases: Sequence[CaseRecord]) -> pd.DataFrame:
    """One row per case: the key, status, usage and provenance, then each case's flat ``columns``
    (``truth.*``, ``prob.*``, ``pred.*``, ``subgroup.*``) as columns; absent values are NaN/None."""
    base = pd.DataFrame(
        [{**{name: getattr(case, name) for name in CASE_COLUMNS if name != "error_code"},
          "error_code": case.error.code if case.error else None,
          **{name: getattr(case, name) for name in PROVENANCE_COLUMNS},
          **_weights_columns(case)} for case in cases],
        columns=[*CASE_COLUMNS, *PROVENANCE_COLUMNS, *WEIGHTS_COLUMNS])
    for name in ("prompt_tokens", "completion_tokens", "latency_s"):
        base[name] = pd.to_numeric(base[name], errors="coerce").astype(float)
    base["repeat"] = base["repeat"].astype("int64")
    extra = pd.DataFrame([case.columns for case in cases], index=base.index)
    clashing = [c for c in extra.columns if c in base.columns]
    for column in extra.columns:
        # numbers with gaps become float with NaN (the reports' "unknown"); text columns stay objects
        known = extra[column].dropna()
        if known.map(lambda v: isinstance(v, int | float)).all():
            extra[column] = pd.to_numeric(extra[column], errors="coerce").astype(float)
    return pd.concat([base, extra.drop(columns=clashing)], axis=1)


def tool_calls_frame(calls: Sequence[StoredToolCall]) -> pd.DataFrame:
    """One row per tool call: which case, which tool, whether it succeeded, its error code and duration."""
    frame = pd.DataFrame([{"run_id": c.run_id, "case_id": c.case_id, "repeat": c.repeat, "position": c.position,
                           "tool": c.tool, "ok": c.ok, "error_code": c.error_code, "duration_s": c.duration_s}
                          for c in calls], columns=list(TOOL_CALL_COLUMNS))
    frame["ok"] = frame["ok"].astype(bool)
    frame["duration_s"] = pd.to_numeric(frame["duration_s"], errors="coerce").astype(float)
    frame["repeat"] = frame["repeat"].astype("int64")
    return frame
