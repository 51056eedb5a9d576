"""The visual-question-answering part of a study report, built from the cases frame's ``vqa.*`` and ``subgroup.*``
columns (written by the vqa graph) and the run's stored study configuration (its arms).

Every succeeded row becomes a :class:`VqaOutcome`; an unparsed reply counts as wrong and its rate is shown. A failed
question (no reply at all) is counted per arm and left out of the figures, and a row whose ``vqa.*`` cells do not
make an outcome is counted, never quoted. The baseline of the paired comparisons is the first arm without experts
(``experts: none``), else the first arm; each corruption's severity curve starts at the clean arm configured like
its corrupted arms (else the baseline, if clean).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypedDict

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from medagent.errors import ResourceExhausted
from medagent.reports.metrics import MetricValue
from medagent.reports.paired import ArmComparison, PairRow, SetRow, compare_arms, pair_accuracy, set_accuracy
from medagent.reports.vqa_arms import ArmInfo, arms_of, baseline_of, curve_groups
from medagent.reports.vqa_metrics import (
    MAX_OUTCOMES,
    CaseTotals,
    OpenAnswerRow,
    SeverityCurve,
    VqaAccuracyRow,
    VqaOutcome,
    accuracy_table,
    bootstrap_config,
    open_answer_table,
    severity_curve,
)

if TYPE_CHECKING:
    from medagent.reports.report import ReportOptions

GROUPS: Final = ("question_type", "modality", "body_part", "category", "language", "source")
CLOSED_OR_OPEN: Final = "closed_or_open"
MAX_GROUP_VALUES: Final = 40  # values shown per group table; rarer ones are pooled, so a hostile column stays short
OTHER_VALUES: Final = "(other values)"
SKIPPED_ROWS_METRIC: Final = "dataset.skipped_rows"
PROBMED_ROLES: Final = frozenset({"ground_truth", "adversarial"})
MEDICONFUSION_ROLE: Final = re.compile(r"image_\d{1,2}")


class _Bootstrap(TypedDict):
    bootstrap: int
    confidence: float
    seed: int


def _settings(options: ReportOptions) -> _Bootstrap:
    b = options.bootstrap
    return {"bootstrap": b.n_resamples, "confidence": b.confidence, "seed": b.seed}


class VqaGroupTable(BaseModel):
    group: str
    pooled_values: int = Field(default=0, description=f"values beyond the {MAX_GROUP_VALUES} most frequent, pooled")
    rows: list[VqaAccuracyRow]


class JudgeRow(BaseModel):
    arm: str
    n_judged: int
    failures: int = Field(description="open answers the judge gave no valid verdict on")
    accuracy: MetricValue = Field(description="share of judged open answers the judge called correct")


class VqaSummary(BaseModel):
    arms: list[ArmInfo] = Field(description="in the study's order")
    baseline: str | None = Field(description="the arm every other is compared with")
    memory: list[str] = Field(description="fresh (each question its own session) and/or kept (a case's memory)")
    modes: list[str]
    skipped_rows: int | None = Field(description="malformed dataset rows skipped; None when not given")
    left_out: int = Field(description="succeeded rows whose vqa cells make no outcome")
    constrained: int = Field(description="answers given under a schema constraint")
    answered: int
    overall: list[VqaAccuracyRow]
    by_kind: list[VqaAccuracyRow]
    closed_open: list[VqaAccuracyRow]
    groups: list[VqaGroupTable]
    open_answers: list[OpenAnswerRow]
    judge: list[JudgeRow]
    probmed: list[PairRow]
    mediconfusion: list[SetRow]
    other_sets: list[PairRow]
    comparisons: list[ArmComparison]
    severity: list[SeverityCurve]


def skipped_rows_of(metrics: Iterable[Any]) -> int:
    """The run's skipped malformed rows from its stored metrics (``store.metrics(run_id)``); 0 when none."""
    return sum(int(m.value or 0) for m in metrics if getattr(m, "name", None) == SKIPPED_ROWS_METRIC)


def _text(value: object, limit: int = 200) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text[:limit] if text else None


def _number(value: object) -> float | None:
    """A numeric cell as a float, None when empty; anything else makes the row unreadable."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, int | float | np.number):
        raise TypeError("not a number")
    number = float(value)
    return None if math.isnan(number) else number


def _flag(value: object) -> bool | None:
    number = _number(value)
    if number is not None and number not in (0.0, 1.0):
        raise ValueError("not a 0/1 flag")
    return None if number is None else number == 1.0


def _outcome(record: Mapping[str, Any]) -> tuple[VqaOutcome, bool | None]:
    """The outcome of one succeeded row and its judge's verdict (None: not judged)."""
    kind, parsed = _text(record.get("vqa.kind")), _flag(record.get("vqa.parsed"))
    groups = {name: value for name in GROUPS if (value := _text(record.get(f"subgroup.{name}"))) is not None}
    groups[CLOSED_OR_OPEN] = "open" if kind == "open" else "closed"
    correct = _flag(record.get("vqa.correct")) if parsed else None
    scored = kind == "open" and parsed
    outcome = VqaOutcome(
        arm=_text(record.get("vqa.arm")), question_id=_text(record.get("vqa.question_id")),
        repeat=int(record.get("repeat") or 0), case_id=_text(record.get("vqa.case_id")), kind=kind,
        parsed=parsed, correct=correct, answer=_text(record.get("vqa.prediction")),
        chance=_number(record.get("vqa.chance")), groups=groups, pair_id=_text(record.get("vqa.pair_id")),
        pair_role=_text(record.get("vqa.pair_role"), 64), exact_match=float(bool(correct)) if scored else None,
        token_f1=_number(record.get("vqa.token_f1")) if scored else None,
        token_recall=_number(record.get("vqa.token_recall")) if scored else None)
    judged = _flag(record.get("vqa.judge_correct")) if kind == "open" else None
    return outcome, judged


@dataclass
class _Rows:
    outcomes: list[VqaOutcome] = field(default_factory=list)
    verdicts: list[bool | None] = field(default_factory=list)
    judge_failed: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str | None, str]] = field(default_factory=list)  # (arm, stored key) of failed questions
    left_out: int = 0
    constrained: int = 0
    memory: set[str] = field(default_factory=set)
    modes: set[str] = field(default_factory=set)
    first_rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # each arm's first row


def _rows(cases: pd.DataFrame) -> _Rows:
    if len(cases) > MAX_OUTCOMES:
        raise ResourceExhausted(f"more than {MAX_OUTCOMES} VQA rows", limit=MAX_OUTCOMES)
    found = _Rows()
    for record in cases.to_dict("records"):
        if record.get("status") != "succeeded":  # its arm as recorded, else read from its stored key
            found.failed.append((_text(record.get("vqa.arm")), str(record.get("case_id"))))
            continue
        try:
            outcome, verdict = _outcome(record)
        except (ValidationError, ValueError, TypeError, OverflowError):
            found.left_out += 1  # which cell was wrong is not said: it may hold dataset text
            continue
        found.outcomes.append(outcome)
        found.verdicts.append(verdict)
        found.judge_failed[outcome.arm] += int(_flag(record.get("vqa.judge_failed")) is True)
        found.constrained += int(_flag(record.get("vqa.constrained")) is True)
        found.memory.update(filter(None, [_text(record.get("vqa.memory"), 16)]))
        found.modes.update(filter(None, [_text(record.get("vqa.mode"), 32)]))
        found.first_rows.setdefault(outcome.arm, record)
    return found


def _pooled(outcomes: list[VqaOutcome], group: str) -> tuple[list[VqaOutcome], int]:
    """The outcomes with a group's rarer values pooled when it has more than MAX_GROUP_VALUES of them."""
    counts = Counter(outcome.groups.get(group) for outcome in outcomes)
    counts.pop(None, None)
    if len(counts) <= MAX_GROUP_VALUES:
        return outcomes, 0
    kept = {value for value, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_GROUP_VALUES]}
    pooled = [o if o.groups.get(group) in kept or group not in o.groups
              else o.model_copy(update={"groups": {**o.groups, group: OTHER_VALUES}}) for o in outcomes]
    return pooled, len(counts) - MAX_GROUP_VALUES


def _judge_rows(rows: _Rows, options: ReportOptions) -> list[JudgeRow]:
    judged: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for outcome, verdict in zip(rows.outcomes, rows.verdicts, strict=True):
        if verdict is not None:
            judged[outcome.arm].append((outcome.case_id, verdict))
    config = bootstrap_config(**_settings(options))
    table = []
    for arm in sorted(set(judged) | {arm for arm, count in rows.judge_failed.items() if count}):
        members = judged.get(arm, [])
        columns = np.column_stack([[verdict for _, verdict in members], np.ones(len(members))])
        totals = CaseTotals([case for case, _ in members], columns, config.derived(f"judge|{arm}"))
        table.append(JudgeRow(arm=arm, n_judged=len(members), failures=rows.judge_failed.get(arm, 0),
                              accuracy=totals.ratio(0, 1, "no judged answers")))
    return table


def _sets(outcomes: list[VqaOutcome], options: ReportOptions) -> tuple[list[PairRow], list[SetRow], list[PairRow]]:
    """ProbMed pairs (ground_truth/adversarial), MediConfusion sets (image_1/image_2) and any other question sets."""
    paired = [o for o in outcomes if o.pair_id is not None]
    probmed = [o for o in paired if o.pair_role in PROBMED_ROLES]
    confusion = [o for o in paired if MEDICONFUSION_ROLE.fullmatch(o.pair_role or "")]
    others = [o for o in paired if o.pair_role not in PROBMED_ROLES and not MEDICONFUSION_ROLE.fullmatch(
        o.pair_role or "")]
    settings = _settings(options)
    return (pair_accuracy(probmed, **settings) if probmed else [],
            set_accuracy(confusion, **settings) if confusion else [],
            pair_accuracy(others, **settings) if others else [])


def _severity(outcomes: list[VqaOutcome], arms: list[ArmInfo], baseline: str | None,
              options: ReportOptions) -> list[SeverityCurve]:
    curves: list[SeverityCurve] = []
    for label, severities, clean in curve_groups(arms, baseline):
        members = set(severities) | {clean}
        curves += severity_curve([o for o in outcomes if o.arm in members],
                                 {arm: (label, severity) for arm, severity in severities.items()}, clean_arm=clean,
                                 **_settings(options))
    return curves


def is_vqa(cases: pd.DataFrame, run_config: Mapping[str, Any] | None) -> bool:
    graph = (run_config or {}).get("graph")
    return "vqa.kind" in cases.columns or (isinstance(graph, Mapping) and graph.get("type") == "vqa")


def summarise_vqa(cases: pd.DataFrame, run_config: Mapping[str, Any] | None, skipped_rows: int | None,
                  options: ReportOptions) -> VqaSummary | None:
    """Every VQA table of one run's report; None for a run that is not a VQA study."""
    if not is_vqa(cases, run_config):
        return None
    rows = _rows(cases)
    outcomes = rows.outcomes
    arms = arms_of(run_config, rows.first_rows, rows.failed)
    baseline = baseline_of(arms)
    settings = _settings(options)
    kinds = {o.groups[CLOSED_OR_OPEN] for o in outcomes}
    groups = []
    for group in GROUPS:
        if any(group in o.groups for o in outcomes):
            pooled, extra = _pooled(outcomes, group)
            groups.append(VqaGroupTable(group=group, pooled_values=extra, rows=accuracy_table(
                pooled, by=group, small_group=options.small_group, **settings)))
    probmed, mediconfusion, other_sets = _sets(outcomes, options)
    with_outcomes = {o.arm for o in outcomes}
    return VqaSummary(
        arms=arms, baseline=baseline, memory=sorted(rows.memory), modes=sorted(rows.modes),
        skipped_rows=skipped_rows, left_out=rows.left_out, constrained=rows.constrained, answered=len(outcomes),
        overall=accuracy_table(outcomes, small_group=options.small_group, **settings),
        by_kind=accuracy_table(outcomes, by="kind", small_group=options.small_group, **settings),
        closed_open=accuracy_table(outcomes, by=CLOSED_OR_OPEN, small_group=options.small_group, **settings)
        if len(kinds) > 1 else [],
        groups=groups, open_answers=open_answer_table(outcomes, **settings), judge=_judge_rows(rows, options),
        probmed=probmed, mediconfusion=mediconfusion, other_sets=other_sets,
        comparisons=compare_arms(outcomes, baseline, **settings)
        if baseline in with_outcomes and len(with_outcomes) > 1 else [],
        severity=_severity(outcomes, arms, baseline, options))

