"""What the gallery and the trajectory export read from a study store, as structural types.

Reports sit beside the store in medagent's layers (neither imports the other), so they name only the methods and
fields they use; :class:`medagent.store.StudyStore` and its :class:`~medagent.store.CaseRecord` fit these
protocols as they are. :func:`outcome` reads one case's arm, question, prediction and correctness from its flat
columns, the same way for VQA and dialogue runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medagent.tools.invoke import ErrorRecord, ToolCallRecord


class StoredCase(Protocol):
    @property
    def case_id(self) -> str: ...
    @property
    def repeat(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def result(self) -> dict[str, Any] | None: ...
    @property
    def error(self) -> ErrorRecord | None: ...
    @property
    def columns(self) -> Mapping[str, Any]: ...
    @property
    def model_id(self) -> str | None: ...
    @property
    def seed(self) -> int | None: ...


class StoredRun(Protocol):
    @property
    def config(self) -> dict[str, Any]: ...


class CaseStore(Protocol):
    def get_run(self, run_id: str) -> StoredRun | None: ...
    def cases(self, run_id: str) -> Sequence[StoredCase]: ...
    def recorded_keys(self, run_id: str) -> set[tuple[str, int]]: ...
    def get_case(self, run_id: str, case_id: str, repeat: int) -> StoredCase | None: ...
    def messages(self, run_id: str, case_id: str, repeat: int) -> list[dict[str, Any]]: ...
    def tool_calls(self, run_id: str, case_id: str | None = None,
                   repeat: int | None = None) -> Sequence[ToolCallRecord]: ...


@dataclass(frozen=True)
class Outcome:
    """A case's place in the study and its score; None where the run's kind does not have it."""

    arm: str | None
    question_id: str | None
    prediction: Any
    gold: Any
    parsed: bool | None
    correct: bool | None


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def graph_type(store: CaseStore, run_id: str) -> str | None:
    """The run's graph type as its stored configuration names it (``vqa``, ``dialogue``, ...)."""
    run = store.get_run(run_id)
    graph = run.config.get("graph") if run is not None else None
    kind = graph.get("type") if isinstance(graph, Mapping) else None
    return kind if isinstance(kind, str) else None


def arm_names(store: CaseStore, run_id: str) -> list[str]:
    """The run's arms; a study that names none runs one, ``default``."""
    run = store.get_run(run_id)
    arms = run.config.get("arms") if run is not None else None
    names = [str(arm["name"]) for arm in arms if isinstance(arm, Mapping) and "name" in arm] \
        if isinstance(arms, list) else []
    return names or ["default"]


def outcome(case: StoredCase, kind: str | None, arms: Sequence[str] = ()) -> Outcome:
    """``kind``: the run's graph type; ``arms``: its arm names, for a failed case whose columns do not say its arm
    (its stored id is ``arm:question`` when the study compares arms, else the question id itself)."""
    columns = case.columns
    if kind == "dialogue":
        return Outcome(arm=None, question_id=None, prediction=columns.get("dialogue.prediction"),
                       gold=columns.get("dialogue.truth"), parsed=None, correct=_flag(columns.get("dialogue.correct")))
    if kind != "vqa":
        return Outcome(arm=None, question_id=None, prediction=None, gold=None, parsed=None, correct=None)
    arm, question = columns.get("vqa.arm"), columns.get("vqa.question_id")
    if arm is None and question is None:
        prefix, _, rest = case.case_id.partition(":")
        arm, question = (prefix, rest) if len(arms) > 1 and prefix in arms and rest else \
            (arms[0] if len(arms) == 1 else None, case.case_id)
    return Outcome(arm=None if arm is None else str(arm), question_id=None if question is None else str(question),
                   prediction=columns.get("vqa.prediction"), gold=columns.get("vqa.gold"),
                   parsed=_flag(columns.get("vqa.parsed")), correct=_flag(columns.get("vqa.correct")))
