"""Classification metrics per finding, their macro/weighted summaries and per-subgroup tables.

Which rows count: succeeded cases whose ground truth is known. A succeeded case with no
prediction for a finding is left out of that finding and counted in
``n_missing_prediction``; failed cases are reported by :mod:`medagent.reports.operations`.
Each repeat of a case is one observation; intervals resample whole cases
(see :mod:`medagent.reports.bootstrap`).

A prediction is positive when ``prob.<finding> >= threshold`` (one entry per threshold),
or, when a finding has no probabilities, when ``pred.<finding> == 1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from medagent.reports.bootstrap import BootstrapConfig, CaseResampler, ratio, weighted_auroc
from medagent.reports.schema import PRED_PREFIX, PROB_PREFIX, SUBGROUP_PREFIX, TRUTH_PREFIX, CasesLayout

METRIC_NAMES: Final = ("accuracy", "sensitivity", "specificity", "f1", "auroc")
DEFAULT_THRESHOLD: Final = 0.5
SMALL_GROUP: Final = 10

Thresholds = float | Sequence[float] | Mapping[str, float | Sequence[float]]


class MetricValue(BaseModel):
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    """Observations in the metric's denominator (positives for sensitivity, all rows for accuracy)."""
    reason: str | None = None
    """Why ``value`` is None (e.g. only one class present)."""


class Confusion(BaseModel):
    tp: int
    fp: int
    tn: int
    fn: int


class FindingMetrics(BaseModel):
    finding: str
    source: Literal["probability", "label"]
    threshold: float | None
    n_observations: int
    n_cases: int
    n_positive: int
    n_negative: int
    n_missing_prediction: int
    confusion: Confusion
    accuracy: MetricValue
    sensitivity: MetricValue
    specificity: MetricValue
    f1: MetricValue
    auroc: MetricValue

    def metric(self, name: str) -> MetricValue:
        return getattr(self, name)


class SummaryMetrics(BaseModel):
    """Average over findings (each at its first threshold): macro = plain mean, weighted = by positives."""

    average: Literal["macro", "weighted"]
    findings: list[str]
    metrics: dict[str, MetricValue]


class SubgroupRow(BaseModel):
    value: str
    n_cases: int
    n_observations: int
    small: bool
    """True when fewer than ``SMALL_GROUP`` cases: read its metrics with care."""
    findings: list[FindingMetrics]


class SubgroupTable(BaseModel):
    subgroup: str
    rows: list[SubgroupRow]


class _Computed(BaseModel, arbitrary_types_allowed=True):
    metrics: FindingMetrics
    samples: dict[str, np.ndarray]


def resolve_thresholds(thresholds: Thresholds, finding: str) -> list[float]:
    """The thresholds of one finding; a mapping falls back to its ``"*"`` key, then to 0.5."""
    if isinstance(thresholds, Mapping):
        thresholds = thresholds.get(finding, thresholds.get("*", DEFAULT_THRESHOLD))
    values = [float(thresholds)] if isinstance(thresholds, int | float) else [float(t) for t in thresholds]
    return values or [DEFAULT_THRESHOLD]


def _value(point: float | np.ndarray, samples: np.ndarray, n: int, resampler: CaseResampler,
           undefined: str) -> MetricValue:
    point = float(point)  # a 0-d array from ratio()
    if not np.isfinite(point):
        return MetricValue(value=None, n=n, reason=undefined)
    low, high = resampler.interval(samples)
    return MetricValue(value=float(point), ci_low=low, ci_high=high, n=n)


def _finding_entry(
    truth: np.ndarray, positive: np.ndarray, score: np.ndarray | None, mask: np.ndarray, finding: str,
    source: Literal["probability", "label"], threshold: float | None, resampler: CaseResampler, n_missing: int,
) -> _Computed:
    from sklearn.metrics import roc_auc_score

    weights = resampler.row_weights(mask)
    y, p = truth[mask].astype(bool), positive[mask].astype(bool)
    cells = np.stack([y & p, ~y & p, ~y & ~p, y & ~p], axis=1).astype(float)  # tp fp tn fn per row
    tp, fp, tn, fn = cells.sum(axis=0)
    btp, bfp, btn, bfn = (weights @ cells).T
    samples = {
        "accuracy": ratio(btp + btn, btp + bfp + btn + bfn),
        "sensitivity": ratio(btp, btp + bfn),
        "specificity": ratio(btn, btn + bfp),
        "f1": ratio(2 * btp, 2 * btp + bfp + bfn),
    }
    n_pos, n_neg = int(tp + fn), int(tn + fp)
    values = {
        "accuracy": _value(ratio(tp + tn, y.size), samples["accuracy"], y.size, resampler, "no observations"),
        "sensitivity": _value(ratio(tp, n_pos), samples["sensitivity"], n_pos, resampler, "no positive cases"),
        "specificity": _value(ratio(tn, n_neg), samples["specificity"], n_neg, resampler, "no negative cases"),
        "f1": _value(ratio(2 * tp, 2 * tp + fp + fn), samples["f1"], int(tp + fp + fn), resampler,
                     "no positive cases and no positive predictions"),
    }
    if score is None:
        values["auroc"] = MetricValue(value=None, n=y.size, reason="no predicted probabilities")
        samples["auroc"] = np.full(resampler.n_resamples, np.nan)
    elif n_pos == 0 or n_neg == 0:
        missing = "positive" if n_pos == 0 else "negative"
        values["auroc"] = MetricValue(value=None, n=y.size, reason=f"undefined: no {missing} cases")
        samples["auroc"] = np.full(resampler.n_resamples, np.nan)
    else:
        samples["auroc"] = weighted_auroc(y, score[mask], weights)
        point = float(roc_auc_score(y, score[mask]))
        values["auroc"] = _value(point, samples["auroc"], y.size, resampler, "undefined")
    metrics = FindingMetrics(
        finding=finding, source=source, threshold=threshold, n_observations=int(y.size),
        n_cases=resampler.count_cases(mask), n_positive=n_pos, n_negative=n_neg,
        n_missing_prediction=n_missing, confusion=Confusion(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn)), **values,
    )
    return _Computed(metrics=metrics, samples=samples)


def _compute(
    cases: pd.DataFrame, layout: CasesLayout, thresholds: Thresholds, resampler: CaseResampler, *, primary_only: bool
) -> list[_Computed]:
    succeeded = (cases["status"] == "succeeded").to_numpy()
    out: list[_Computed] = []
    for finding in layout.findings:
        truth = pd.to_numeric(cases[TRUTH_PREFIX + finding]).to_numpy(dtype=float)
        has_prob = layout.has_probability(finding)
        column = (PROB_PREFIX if has_prob else PRED_PREFIX) + finding
        prediction = pd.to_numeric(cases[column]).to_numpy(dtype=float)
        known = succeeded & ~np.isnan(truth)
        mask = known & ~np.isnan(prediction)
        n_missing = int((known & np.isnan(prediction)).sum())
        if not has_prob:
            out.append(_finding_entry(truth, prediction == 1, None, mask, finding, "label", None, resampler, n_missing))
            continue
        finding_thresholds = resolve_thresholds(thresholds, finding)
        for threshold in finding_thresholds[:1] if primary_only else finding_thresholds:
            out.append(_finding_entry(truth, prediction >= threshold, prediction, mask, finding, "probability",
                                      threshold, resampler, n_missing))
    return out


def finding_metrics(
    cases: pd.DataFrame, layout: CasesLayout, thresholds: Thresholds = DEFAULT_THRESHOLD,
    bootstrap: BootstrapConfig | None = None,
) -> tuple[list[FindingMetrics], list[SummaryMetrics]]:
    """Metrics per finding and threshold, plus macro and weighted summaries over findings."""
    resampler = CaseResampler(cases["case_id"].to_numpy(), bootstrap or BootstrapConfig())
    computed = _compute(cases, layout, thresholds, resampler, primary_only=False)
    primary = {c.metrics.finding: c for c in reversed(computed)}  # first entry of each finding wins
    ordered = [primary[f] for f in layout.findings if f in primary]
    return [c.metrics for c in computed], [_summary(ordered, kind, resampler) for kind in ("macro", "weighted")]


def _summary(
    entries: list[_Computed], average: Literal["macro", "weighted"], resampler: CaseResampler
) -> SummaryMetrics:
    metrics: dict[str, MetricValue] = {}
    for name in METRIC_NAMES:
        used = [c for c in entries if c.metrics.metric(name).value is not None]
        if not used:
            metrics[name] = MetricValue(value=None, reason="undefined for every finding")
            continue
        # weighted: support = positives (as scikit-learn's average="weighted"); weights fixed across resamples
        weights = np.array([1.0 if average == "macro" else c.metrics.n_positive for c in used])
        if weights.sum() == 0:
            metrics[name] = MetricValue(value=None, n=len(used), reason="no positive cases in any finding")
            continue
        points = np.array([c.metrics.metric(name).value for c in used], dtype=float)
        samples = np.stack([c.samples[name] for c in used], axis=1)
        defined = np.isfinite(samples)
        boot = ratio((np.where(defined, samples, 0) * weights).sum(axis=1), (defined * weights).sum(axis=1))
        point = float((points * weights).sum() / weights.sum())
        metrics[name] = _value(point, boot, len(used), resampler, "undefined")
    return SummaryMetrics(average=average, findings=[c.metrics.finding for c in entries], metrics=metrics)


def subgroup_tables(
    cases: pd.DataFrame, layout: CasesLayout, thresholds: Thresholds = DEFAULT_THRESHOLD,
    bootstrap: BootstrapConfig | None = None, small_group: int = SMALL_GROUP,
) -> list[SubgroupTable]:
    """Per subgroup column and value: the per-finding metrics at each finding's first threshold."""
    config = bootstrap or BootstrapConfig()
    tables: list[SubgroupTable] = []
    for name in layout.subgroups:
        labels = cases[SUBGROUP_PREFIX + name].astype("object").where(cases[SUBGROUP_PREFIX + name].notna(), "unknown")
        labels = labels.astype(str)
        rows: list[SubgroupRow] = []
        for value in sorted(labels.unique()):
            subset = cases[(labels == value).to_numpy()]
            resampler = CaseResampler(subset["case_id"].to_numpy(), config.derived(f"{name}={value}"))
            computed = _compute(subset, layout, thresholds, resampler, primary_only=True)
            n_cases = int(subset["case_id"].nunique())
            rows.append(SubgroupRow(value=value, n_cases=n_cases, n_observations=len(subset),
                                    small=n_cases < small_group, findings=[c.metrics for c in computed]))
        tables.append(SubgroupTable(subgroup=name, rows=rows))
    return tables
