"""Scores of a visual-question-answering study: accuracy, open-answer overlap, pair and set accuracy, severity curves.

A study stores one :class:`VqaOutcome` per (arm, question, repeat). A reply that could not be parsed counts as
wrong in ``accuracy`` and is reported separately (``parse_failure_rate``, and ``parsed_accuracy`` among the rest),
so parsing bugs show instead of passing as a weak model. Every figure carries the chance level of its questions.

Intervals are case-level percentile bootstraps (:mod:`medagent.reports.bootstrap`): the questions and repeats of one
case are resampled together. Rows are first summed per case, so memory grows with cases, not with questions.
ProbMed pairs, MediConfusion sets and paired comparisons of arms live in :mod:`medagent.reports.paired`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from medagent.errors import ConfigurationError, MissingDependency, ResourceExhausted
from medagent.files import replacing
from medagent.reports.bootstrap import BootstrapConfig, CaseResampler, ratio
from medagent.reports.metrics import SMALL_GROUP, MetricValue

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_OUTCOMES: Final = 2_000_000
MAX_GROUP_KEYS: Final = 32
MAX_SET_MEMBERS: Final = 16
UNKNOWN: Final = "unknown"
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class VqaOutcomeError(ConfigurationError):
    """The outcome table is inconsistent (a repeated row, an unknown arm); located by row, never quoting values."""

    code = "vqa_outcome_invalid"


class VqaOutcome(BaseModel):
    """One answered question of one arm and repeat, as the study stores it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arm: Text
    question_id: Text
    repeat: int = Field(default=0, ge=0, le=100_000)
    case_id: str = Field(min_length=1, max_length=200, description="the bootstrap's unit: its questions move together")
    kind: Literal["choice", "yes_no", "open"]
    parsed: bool
    correct: bool | None = Field(description="None exactly when the reply was not parsed; open questions: the "
                                 "study's verdict (exact match or a judge)")
    answer: str | None = Field(default=None, max_length=200, description="the parsed answer (letter, yes/no)")
    chance: Score | None = None
    groups: dict[str, str] = Field(default_factory=dict, description="question_type, modality, body_part, ...")
    pair_id: str | None = Field(default=None, max_length=200, description="ProbMed pair / MediConfusion set")
    pair_role: str | None = Field(default=None, max_length=64)
    exact_match: Score | None = None
    token_f1: Score | None = None
    token_recall: Score | None = None

    @model_validator(mode="after")
    def _consistent(self) -> VqaOutcome:
        if self.parsed == (self.correct is None):
            raise ValueError("correct must be None exactly when the reply was not parsed")
        if len(self.groups) > MAX_GROUP_KEYS or any(len(k) > 64 or len(v) > 200 for k, v in self.groups.items()):
            raise ValueError(f"at most {MAX_GROUP_KEYS} groups, keys of at most 64 and values of at most 200 chars")
        return self


class VqaAccuracyRow(BaseModel):
    arm: str
    by: str | None
    value: str | None = Field(description="the group value of this row; None for the arm overall")
    n: int
    n_cases: int
    small: bool = Field(description=f"fewer than {SMALL_GROUP} cases: read with care")
    accuracy: MetricValue = Field(description="unparsed replies count as wrong")
    parsed_accuracy: MetricValue
    parse_failure_rate: MetricValue
    chance: float | None = Field(description="mean chance level of the questions that have one")


class OpenAnswerRow(BaseModel):
    arm: str
    by: str | None
    value: str | None
    n: int
    n_cases: int
    exact_match: MetricValue
    token_f1: MetricValue
    token_recall: MetricValue


class CaseTotals:
    """Column sums over rows, at the point and under every case resample (one set of draws for all columns)."""

    def __init__(self, case_ids: Sequence[str], columns: np.ndarray, config: BootstrapConfig) -> None:
        columns = np.asarray(columns, dtype=float)
        columns = columns[:, None] if columns.ndim == 1 else columns
        cases, inverse = np.unique(np.asarray(case_ids, dtype=str), return_inverse=True)
        per_case = np.stack([np.bincount(inverse, weights=column, minlength=cases.size) for column in columns.T], 1)
        self.n_cases = int(cases.size)
        self.totals = columns.sum(axis=0)
        self.resampler = CaseResampler(cases, config)
        self.samples = self.resampler.row_weights(np.ones(cases.size, dtype=bool)) @ per_case

    def _value(self, point: float, samples: np.ndarray, n: int, undefined: str) -> MetricValue:
        if not np.isfinite(point):
            return MetricValue(value=None, n=n, reason=undefined)
        low, high = self.resampler.interval(samples)
        return MetricValue(value=point, ci_low=low, ci_high=high, n=n)

    def ratio(self, numerator: int, denominator: int, undefined: str = "no observations") -> MetricValue:
        point = float(ratio(self.totals[numerator], self.totals[denominator]))
        samples = ratio(self.samples[:, numerator], self.samples[:, denominator])
        return self._value(point, samples, int(self.totals[denominator]), undefined)

    def difference(self, minuend: int, subtrahend: int, denominator: int) -> MetricValue:
        """(minuend - subtrahend) / denominator: a paired difference of two rates over the same rows."""
        point = float(ratio(self.totals[minuend] - self.totals[subtrahend], self.totals[denominator]))
        samples = ratio(self.samples[:, minuend] - self.samples[:, subtrahend], self.samples[:, denominator])
        return self._value(point, samples, int(self.totals[denominator]), "no paired observations")


def checked(outcomes: Iterable[VqaOutcome]) -> list[VqaOutcome]:
    """The outcomes as a list, bounded in number, each (arm, question_id, repeat) once."""
    rows: list[VqaOutcome] = []
    seen: dict[tuple[str, str, int], int] = {}
    for index, outcome in enumerate(outcomes):
        if index >= MAX_OUTCOMES:
            raise ResourceExhausted(f"more than {MAX_OUTCOMES} VQA outcomes", limit=MAX_OUTCOMES)
        key = (outcome.arm, outcome.question_id, outcome.repeat)
        if key in seen:
            raise VqaOutcomeError(f"outcome row {index} repeats the arm, question_id and repeat of row {seen[key]}",
                                  row=index)
        seen[key] = index
        rows.append(outcome)
    return rows


def bootstrap_config(bootstrap: int, confidence: float, seed: int) -> BootstrapConfig:
    return BootstrapConfig(n_resamples=bootstrap, confidence=confidence, seed=seed)


def _grouped(rows: list[VqaOutcome], by: str | None) -> dict[tuple[str, str | None], list[VqaOutcome]]:
    groups: dict[tuple[str, str | None], list[VqaOutcome]] = defaultdict(list)
    for row in rows:
        value = None if by is None else row.kind if by == "kind" else row.groups.get(by, UNKNOWN)
        groups[(row.arm, value)].append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or "")))


def mean_of_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def accuracy_table(outcomes: Iterable[VqaOutcome], *, by: str | None = None, bootstrap: int = 1000,
                   confidence: float = 0.95, seed: int = 0, small_group: int = SMALL_GROUP) -> list[VqaAccuracyRow]:
    """Per arm (and per value of group ``by``; ``"kind"`` splits choice, yes/no and open): accuracy with its
    interval, accuracy among parsed replies, the parse-failure rate and the chance level."""
    config = bootstrap_config(bootstrap, confidence, seed)
    table: list[VqaAccuracyRow] = []
    for (arm, value), members in _grouped(checked(outcomes), by).items():
        parsed = np.array([row.parsed for row in members])
        correct = np.array([row.correct is True for row in members])
        columns = np.column_stack([correct, parsed, ~parsed, np.ones(parsed.size)])
        totals = CaseTotals([row.case_id for row in members], columns, config.derived(f"{arm}|{by}={value}"))
        table.append(VqaAccuracyRow(
            arm=arm, by=by, value=value, n=len(members), n_cases=totals.n_cases, small=totals.n_cases < small_group,
            accuracy=totals.ratio(0, 3), parsed_accuracy=totals.ratio(0, 1, "no parsed replies"),
            parse_failure_rate=totals.ratio(2, 3), chance=mean_of_known(row.chance for row in members)))
    return table


def open_answer_table(outcomes: Iterable[VqaOutcome], *, by: str | None = None, bootstrap: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> list[OpenAnswerRow]:
    """Mean exact match, token F1 and token recall of open questions; an unparsed reply scores 0, a parsed one
    without a score is left out of that metric."""
    config = bootstrap_config(bootstrap, confidence, seed)
    table: list[OpenAnswerRow] = []
    names = ("exact_match", "token_f1", "token_recall")
    for (arm, value), members in _grouped([r for r in checked(outcomes) if r.kind == "open"], by).items():
        columns = []
        for name in names:
            scores = [getattr(row, name) if row.parsed else 0.0 for row in members]
            columns += [[score or 0.0 for score in scores], [score is not None for score in scores]]
        totals = CaseTotals([row.case_id for row in members], np.array(columns).T,
                            config.derived(f"{arm}|{by}={value}"))
        metrics = {name: totals.ratio(2 * i, 2 * i + 1, "no scored replies") for i, name in enumerate(names)}
        table.append(OpenAnswerRow(arm=arm, by=by, value=value, n=len(members), n_cases=totals.n_cases, **metrics))
    return table


class SeverityPoint(BaseModel):
    arm: str
    severity: float
    accuracy: MetricValue


class SeverityCurve(BaseModel):
    corruption: str = Field(description="the curve: a corruption kind, or any family label the study gives")
    points: list[SeverityPoint] = Field(description="by increasing severity; the clean arm, if any, at 0")
    chance: float | None


def severity_curve(outcomes: Iterable[VqaOutcome], arm_severity: Mapping[str, tuple[str, float]], *,
                   clean_arm: str | None = None, bootstrap: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> list[SeverityCurve]:
    """Accuracy per severity for each corruption (``arm_severity``: arm -> (corruption, severity)); the
    ``clean_arm``'s accuracy starts every curve at severity 0. Arms without outcomes get an undefined point."""
    rows = checked(outcomes)
    by_arm: dict[str, list[VqaOutcome]] = defaultdict(list)
    for row in rows:
        by_arm[row.arm].append(row)
    config = bootstrap_config(bootstrap, confidence, seed)

    def point(arm: str, severity: float) -> SeverityPoint:
        members = by_arm.get(arm, [])
        columns = np.column_stack([[row.correct is True for row in members], np.ones(len(members))])
        totals = CaseTotals([row.case_id for row in members], columns, config.derived(f"severity|{arm}"))
        return SeverityPoint(arm=arm, severity=severity, accuracy=totals.ratio(0, 1, "no outcomes for this arm"))

    curves: dict[str, dict[float, SeverityPoint]] = defaultdict(dict)
    for arm, (corruption, severity) in sorted(arm_severity.items()):
        if not np.isfinite(severity) or float(severity) in curves[corruption]:
            raise VqaOutcomeError("each corruption needs distinct, finite severities (two arms share one)")
        curves[corruption][float(severity)] = point(arm, float(severity))
    clean = point(clean_arm, 0.0) if clean_arm is not None else None
    out: list[SeverityCurve] = []
    for corruption, points in sorted(curves.items()):
        if clean is not None:
            points.setdefault(0.0, clean)
        arms = {p.arm for p in points.values()}
        out.append(SeverityCurve(corruption=corruption, points=[points[s] for s in sorted(points)],
                                 chance=mean_of_known(row.chance for arm in arms for row in by_arm.get(arm, []))))
    return out


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependency("the severity plot needs matplotlib: install medagent[reports]") from None
    figure = Figure(figsize=(width, height), dpi=100)  # own Agg canvas: pyplot's global state stays untouched
    FigureCanvasAgg(figure)
    return figure


def plot_severity(curves: Sequence[SeverityCurve], path: Path | str) -> Path:
    """A PNG of accuracy (with its interval) against severity, one line per corruption, chance dashed."""
    figure = _figure(6.0, 4.2)
    axes = figure.add_subplot()
    for curve in curves:
        defined = [p for p in curve.points if p.accuracy.value is not None]
        if not defined:
            continue
        x = np.array([p.severity for p in defined])
        y = np.array([p.accuracy.value for p in defined], dtype=float)
        low = np.array([v if p.accuracy.ci_low is None else p.accuracy.ci_low for p, v in zip(defined, y, strict=True)])
        high = np.array([v if p.accuracy.ci_high is None else p.accuracy.ci_high
                         for p, v in zip(defined, y, strict=True)])
        label = curve.corruption.replace("$", r"\$")  # a '$' in a label must not start mathtext
        line = axes.errorbar(x, y, yerr=np.vstack([y - low, high - y]).clip(0), marker="o", capsize=3, label=label)
        if curve.chance is not None:
            axes.axhline(curve.chance, ls="--", lw=1, color=line[0].get_color(), alpha=0.6,
                         label=f"chance ({label})")
    axes.set(xlabel="corruption severity", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy vs corruption severity")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    with replacing(path) as temporary:  # 0600, like every report file
        figure.savefig(temporary, format="png")
    figure.clear()
    return path
