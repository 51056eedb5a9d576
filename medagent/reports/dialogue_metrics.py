"""Dialogue benchmark metrics: diagnostic accuracy, weighted F1, the 'none' rate and rubric scores.

Truths and predictions are first mapped through the case's label set (synonyms count: 'urticaria'
scores as 'hives'). A prediction that names no label, or says 'none', is a dialogue that ended
without a diagnosis: it counts in the none rate and as wrong in accuracy and F1. Weighted F1
follows scikit-learn's ``f1_score(average="weighted", labels=<true classes>)``: per-class F1 over
the classes that occur as truths, weighted by their support; predicted labels that are no case's
truth only lower the recall of the truths they replaced.

Intervals are case-level percentile bootstraps (:mod:`medagent.reports.bootstrap`): repeats of a
case are resampled together, and every metric of a table reuses the same draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, Field

from medagent.dialogue.labels import NONE_LABEL, LabelSet
from medagent.reports.bootstrap import BootstrapConfig, CaseResampler, ratio
from medagent.reports.metrics import SMALL_GROUP, MetricValue

Pair = tuple[str, str | None]
"""(true label, predicted label | 'none' | None) after normalisation."""
DIALOGUE_METRICS: Final = ("weighted_f1", "accuracy", "none_rate")
COMPETENCE_LEVELS: Final = ("unsatisfactory", "satisfactory", "excellent")
RUBRIC_PREFIX: Final = "rubric."


class DialogueRow(BaseModel):
    """One finished dialogue: its case, the truth, the doctor's final answer (free text) and the assessor's scores."""

    case_id: str
    truth: str
    prediction: str | None = Field(description="the final diagnosis as said; None when the doctor gave none")
    groups: dict[str, str] = Field(default_factory=dict, description="temperament, bias, subgroup values ...")
    rubric: dict[str, int] = Field(default_factory=dict, description="rubric item -> 0/1")
    overall: str | None = Field(default=None, description="overall competence: unsatisfactory/satisfactory/excellent")

    @classmethod
    def from_flat(cls, row: Mapping[str, Any]) -> DialogueRow:
        """A flat dict: ``case_id``, ``truth``, ``prediction``, ``overall``, ``rubric.<item>`` 0/1 values; every
        other non-null key is a group value (``{"temperament": "choleric"}``)."""
        fields = {"case_id", "truth", "prediction", "overall", "groups", "rubric"}
        rubric = {key.removeprefix(RUBRIC_PREFIX): int(value) for key, value in row.items()
                  if key.startswith(RUBRIC_PREFIX) and value is not None}
        groups = {key: str(value) for key, value in row.items()
                  if key not in fields and not key.startswith(RUBRIC_PREFIX) and value is not None}
        return cls(case_id=str(row["case_id"]), truth=row["truth"], prediction=row.get("prediction"),
                   groups={**groups, **row.get("groups", {})}, rubric={**rubric, **row.get("rubric", {})},
                   overall=row.get("overall"))


class DialogueMetrics(BaseModel):
    n_observations: int
    n_cases: int
    accuracy: MetricValue
    weighted_f1: MetricValue
    none_rate: MetricValue
    rubric: dict[str, MetricValue] = Field(description="share of dialogues scoring 1 on each rubric item")
    overall_competence: dict[str, MetricValue] = Field(description="share of assessed dialogues at each level")

    def metric(self, name: str) -> MetricValue:
        return getattr(self, name)


class DialogueGroupRow(BaseModel):
    value: str
    small: bool
    """True when fewer than ``SMALL_GROUP`` cases: read its metrics with care."""
    metrics: DialogueMetrics


class DialogueGroupTable(BaseModel):
    group: str
    rows: list[DialogueGroupRow]


class DialogueSummary(BaseModel):
    label_set: str
    bootstrap: BootstrapConfig
    overall: DialogueMetrics
    groups: list[DialogueGroupTable]


# -- point metrics over normalised pairs ------------------------------------------------------


def normalised_pairs(truths: Sequence[str], predictions: Sequence[str | None], label_set: LabelSet) -> list[Pair]:
    """Both sides mapped through ``label_set`` (synonyms, case, punctuation). A truth outside the set stays
    its own class (stripped text); a prediction outside it becomes None (no diagnosis)."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    pairs: list[Pair] = []
    for truth, prediction in zip(truths, predictions, strict=True):
        pairs.append((label_set.normalise(truth) or truth.strip(), label_set.normalise(prediction)))
    return pairs


class _Encoded:
    """Pairs as arrays: one-hot truth and prediction over the true classes, correctness, 'no diagnosis'."""

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.classes = sorted({truth for truth, _ in pairs})
        index = {name: position for position, name in enumerate(self.classes)}
        n, k = len(pairs), len(self.classes)
        self.truth = np.zeros((n, k))
        self.predicted = np.zeros((n, k))
        for row, (truth, prediction) in enumerate(pairs):
            self.truth[row, index[truth]] = 1.0
            if prediction in index:
                self.predicted[row, index[prediction]] = 1.0
        self.correct = np.array([prediction == truth for truth, prediction in pairs], dtype=float)
        self.no_diagnosis = np.array([p is None or p == NONE_LABEL for _, p in pairs], dtype=float)

    def accuracy(self, weights: np.ndarray) -> np.ndarray:
        return ratio(weights @ self.correct, weights.sum(axis=1))

    def none_rate(self, weights: np.ndarray) -> np.ndarray:
        return ratio(weights @ self.no_diagnosis, weights.sum(axis=1))

    def weighted_f1(self, weights: np.ndarray) -> np.ndarray:
        # per class 2TP / (2TP + FP + FN) = 2TP / (support + predicted count); weights are the supports
        support = weights @ self.truth
        hits = weights @ (self.truth * self.correct[:, None])
        f1 = np.nan_to_num(ratio(2 * hits, support + weights @ self.predicted))
        return ratio((f1 * support).sum(axis=1), support.sum(axis=1))


def _point(pairs: Sequence[Pair], metric: str) -> float | None:
    if not pairs:
        return None
    return float(getattr(_Encoded(pairs), metric)(np.ones((1, len(pairs))))[0])


def accuracy(pairs: Sequence[Pair]) -> float | None:
    """Share of dialogues whose prediction is the true label; None without dialogues."""
    return _point(pairs, "accuracy")


def none_rate(pairs: Sequence[Pair]) -> float | None:
    """Share of dialogues that ended without a diagnosis ('none', or nothing the label set knows)."""
    return _point(pairs, "none_rate")


def weighted_f1(pairs: Sequence[Pair]) -> float | None:
    """Support-weighted mean of per-class F1 over the true classes (scikit-learn's ``average='weighted'``)."""
    return _point(pairs, "weighted_f1")


def rubric_means(rubrics: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Mean of each rubric item over the dialogues that were scored on it."""
    items = sorted({item for rubric in rubrics for item in rubric})
    return {item: float(np.mean([r[item] for r in rubrics if item in r])) for item in items}


# -- summaries with bootstrap intervals -------------------------------------------------------


def _value(point: float, samples: np.ndarray, n: int, resampler: CaseResampler) -> MetricValue:
    if not np.isfinite(point):
        return MetricValue(value=None, n=n, reason="no observations")
    low, high = resampler.interval(samples)
    return MetricValue(value=float(point), ci_low=low, ci_high=high, n=n)


def _share(mask: np.ndarray, hits: np.ndarray, resampler: CaseResampler) -> MetricValue:
    """Share of ``hits`` among the rows selected by ``mask``, with its interval."""
    n = int(mask.sum())
    if n == 0:
        return MetricValue(value=None, n=0, reason="no scored dialogues")
    weights = resampler.row_weights(mask)
    return _value(float(hits[mask].mean()), ratio(weights @ hits[mask], weights.sum(axis=1)), n, resampler)


def _metrics(rows: Sequence[DialogueRow], pairs: Sequence[Pair], resampler: CaseResampler) -> DialogueMetrics:
    n = len(rows)
    every = np.ones(n, dtype=bool)
    encoded, weights, ones = _Encoded(pairs), resampler.row_weights(every), np.ones((1, n))
    values = {name: _value(float(getattr(encoded, name)(ones)[0]) if n else np.nan,
                           getattr(encoded, name)(weights) if n else np.full(resampler.n_resamples, np.nan),
                           n, resampler) for name in DIALOGUE_METRICS}
    rubric: dict[str, MetricValue] = {}
    for item in sorted({item for row in rows for item in row.rubric}):
        scored = np.array([item in row.rubric for row in rows])
        rubric[item] = _share(scored, np.array([float(row.rubric.get(item, 0)) for row in rows]), resampler)
    assessed = np.array([row.overall is not None for row in rows], dtype=bool)
    levels = [*COMPETENCE_LEVELS, *sorted({r.overall for r in rows if r.overall} - set(COMPETENCE_LEVELS))]
    competence = {level: _share(assessed, np.array([float(row.overall == level) for row in rows]), resampler)
                  for level in levels} if assessed.any() else {}
    return DialogueMetrics(n_observations=n, n_cases=resampler.count_cases(every), rubric=rubric,
                           overall_competence=competence, **values)


def dialogue_summary(
    rows: Sequence[DialogueRow | Mapping[str, Any]], label_set: LabelSet, group_by: Sequence[str] = (),
    bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0, small_group: int = SMALL_GROUP,
) -> DialogueSummary:
    """Overall metrics and one table per ``group_by`` name (rows without that group count as 'unknown')."""
    parsed = [row if isinstance(row, DialogueRow) else DialogueRow.from_flat(row) for row in rows]
    pairs = normalised_pairs([r.truth for r in parsed], [r.prediction for r in parsed], label_set)
    config = BootstrapConfig(n_resamples=bootstrap, confidence=confidence, seed=seed)
    case_ids = np.array([row.case_id for row in parsed], dtype=str)
    overall = _metrics(parsed, pairs, CaseResampler(case_ids, config))
    tables: list[DialogueGroupTable] = []
    for group in group_by:
        values = [row.groups.get(group, "unknown") for row in parsed]
        table_rows = []
        for value in sorted(set(values)):
            chosen = [i for i, v in enumerate(values) if v == value]
            resampler = CaseResampler(case_ids[chosen], config.derived(f"{group}={value}"))
            metrics = _metrics([parsed[i] for i in chosen], [pairs[i] for i in chosen], resampler)
            table_rows.append(DialogueGroupRow(value=value, small=metrics.n_cases < small_group, metrics=metrics))
        tables.append(DialogueGroupTable(group=group, rows=table_rows))
    return DialogueSummary(label_set=label_set.name, bootstrap=config, overall=overall, groups=tables)
