"""Export a frame (cases, tool calls, a comparison) as CSV or Parquet, or a run's trajectories as JSONL.

Trajectories (``medagent export RUN --format trajectories``) are one JSON object per line, one line per stored
(case, repeat), in case order, for SFT/DPO/GRPO training pipelines:

``run_id``, ``case_id``, ``repeat``, ``status`` (succeeded|failed), ``error`` (the failed case's error code, else
null), ``arm``, ``question_id`` (VQA runs), ``images`` (the artifact ids of the images as the planner saw them),
``messages`` (the conversation as stored, OpenAI chat format: the agent loop's turns, then the answer request and
the reply; a dialogue's turns with their speaker as ``role``), ``tool_calls`` (a list of ``{name, arguments, ok,
output, error, untrained}``: ``output`` for a call that succeeded, ``error`` its error code otherwise,
``untrained`` true when its result came from random test-only weights), ``untrained`` (true when any call's
did: such a line is no training signal), ``answer`` (the planner's reply), ``prediction`` (the answer read from
it), ``gold``, ``parsed``, ``correct`` (booleans, null when not scored), ``model_id`` (as the server reported it)
and ``seed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd

from medagent.errors import ConfigurationError, MissingDependency
from medagent.files import replacing
from medagent.reports.stored import CaseStore, StoredCase, arm_names, graph_type, outcome
from medagent.runtime.untrained import untrained_experts
from medagent.tools.invoke import ToolCallRecord

ExportFormat = Literal["csv", "parquet"]


def export(frame: pd.DataFrame, path: Path | str, format: ExportFormat = "csv") -> Path:  # 'format': the CLI's word
    """Write ``frame`` (without its index) to ``path``; the file appears whole or not at all.

    CSV is UTF-8 with a header row, nulls as empty fields. Parquet goes through pyarrow (the
    ``reports`` extra) and keeps dtypes. Writing to a temporary file in the same folder and
    renaming it means a crash never leaves a half-written export behind.
    """
    if format not in get_args(ExportFormat):
        raise ConfigurationError(f"unknown export format {format!r}; use one of {', '.join(get_args(ExportFormat))}")
    path = Path(path)
    with replacing(path) as temporary:
        if format == "csv":
            frame.to_csv(temporary, index=False, encoding="utf-8")
        else:
            try:
                import pyarrow  # noqa: F401 - fail with a clear message, not pandas' generic one
            except ImportError as exc:
                raise MissingDependency("Parquet export needs pyarrow: install medagent[reports]") from exc
            frame.to_parquet(temporary, index=False, engine="pyarrow")
    return path


def export_trajectories(store: CaseStore, run_id: str, path: Path | str) -> int:
    """Write the run's trajectories to ``path`` (0600, whole or not at all); returns the number of lines.

    Cases are read and written one at a time: memory holds one case's messages, never the run's."""
    kind, arms = graph_type(store, run_id), arm_names(store, run_id)
    path, lines = Path(path), 0
    with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        for case_id, repeat in sorted(store.recorded_keys(run_id)):
            case = store.get_case(run_id, case_id, repeat)
            if case is None:
                continue  # removed while the export ran
            row = trajectory(case, run_id, kind, arms, store.messages(run_id, case_id, repeat),
                             store.tool_calls(run_id, case_id, repeat))
            stream.write(_json_line(row))
            lines += 1
    return lines


def trajectory(case: StoredCase, run_id: str, kind: str | None, arms: list[str], messages: list[dict[str, Any]],
               calls: Sequence[ToolCallRecord]) -> dict[str, Any]:
    """One line of the trajectory export (see the module's docstring for its fields)."""
    scored = outcome(case, kind, arms)
    images = (case.result or {}).get("images")
    exported = [_call(call) for call in calls]
    return {
        "run_id": run_id, "case_id": case.case_id, "repeat": case.repeat, "status": case.status,
        "error": case.error.code if case.error else None, "arm": scored.arm, "question_id": scored.question_id,
        "images": [image for image in images if isinstance(image, str)] if isinstance(images, list) else [],
        "messages": messages, "tool_calls": exported, "untrained": any(call["untrained"] for call in exported),
        "answer": case.answer,
        "prediction": scored.prediction, "gold": scored.gold, "parsed": scored.parsed, "correct": scored.correct,
        "model_id": case.model_id, "seed": case.seed,
    }


def _call(call: ToolCallRecord) -> dict[str, Any]:
    return {"name": call.tool, "arguments": call.arguments, "ok": call.ok, "output": call.output if call.ok else None,
            "error": None if call.ok else (call.error_code or "failed"),
            "untrained": call.ok and bool(untrained_experts([call.output]))}


def _json_line(row: dict[str, Any]) -> str:
    # ASCII: a lone surrogate in stored text stays a \u escape instead of failing the UTF-8 write
    try:
        return json.dumps(row, allow_nan=False, default=str) + "\n"
    except ValueError:  # a NaN or infinity inside a stored tool output: not JSON, written as null
        return json.dumps(_finite(row), allow_nan=False, default=str) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
