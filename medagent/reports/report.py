"""A run's whole report as one typed object, and the side-by-side comparison of several runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from medagent.reports.bootstrap import BootstrapConfig
from medagent.reports.dialogue_metrics import DialogueSummary
from medagent.reports.dialogue_report import summarise_dialogues
from medagent.reports.metrics import (
    METRIC_NAMES,
    SMALL_GROUP,
    FindingMetrics,
    MetricValue,
    SubgroupTable,
    SummaryMetrics,
    finding_metrics,
    subgroup_tables,
)
from medagent.reports.operations import CaseOutcomes, TokenUsage, ToolUsage, case_outcomes, token_usage, tool_usage
from medagent.reports.provenance import ReportProvenance, report_provenance
from medagent.reports.schema import (
    PRED_PREFIX,
    PROB_PREFIX,
    TRUTH_PREFIX,
    ReportInputError,
    empty_tool_calls,
    validate_cases,
    validate_tool_calls,
)
from medagent.reports.vqa_report import VqaSummary, summarise_vqa

MACRO_ROW = "macro average"


class ReportOptions(BaseModel):
    thresholds: float | list[float] | dict[str, float | list[float]] = Field(
        default=0.5, description="one threshold, a list, or per finding (key '*' = default for the rest)"
    )
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    small_group: int = Field(default=SMALL_GROUP, ge=1, description="subgroups with fewer cases are flagged")
    findings: list[str] | None = Field(default=None, description="score only these findings; None: every one")
    run_config: dict[str, Any] | None = Field(
        default=None, exclude=True, repr=False,
        description="the run's stored study configuration (a VQA report reads its arms); not part of the report")

    @classmethod
    def from_study(cls, run_config: dict[str, Any]) -> ReportOptions:
        """The options a study's ``metrics:`` section sets (thresholds, bootstrap, confidence), as stored
        with its run; the defaults when it has none."""
        metrics = run_config.get("metrics") or {}
        options: dict[str, Any] = {}
        if "thresholds" in metrics:
            options["thresholds"] = metrics["thresholds"]
        if metrics.get("findings"):
            options["findings"] = list(metrics["findings"])
        bootstrap = {key: metrics[name] for key, name in (("n_resamples", "bootstrap"), ("confidence", "confidence"))
                     if name in metrics}
        if bootstrap:
            options["bootstrap"] = BootstrapConfig(**bootstrap)
        return cls(**options, run_config=dict(run_config))


class PlotFile(BaseModel):
    kind: Literal["roc", "confusion", "latency", "severity"]
    title: str
    path: Path


class StudyReport(BaseModel):
    run_id: str
    title: str
    options: ReportOptions
    outcomes: CaseOutcomes
    findings: list[FindingMetrics]
    summaries: list[SummaryMetrics]
    subgroups: list[SubgroupTable]
    tools: list[ToolUsage]
    tokens: TokenUsage
    dialogue: DialogueSummary | None = Field(default=None, description="dialogue-benchmark runs only")
    vqa: VqaSummary | None = Field(default=None, description="visual-question-answering runs only")
    assessor_failures: int = 0
    plots: list[PlotFile] = Field(default_factory=list)
    provenance: ReportProvenance = Field(default_factory=ReportProvenance, description="what produced the run")


def _single_run(frame: pd.DataFrame, run_id: str | None, name: str) -> tuple[pd.DataFrame, str]:
    runs = sorted(str(r) for r in frame["run_id"].dropna().unique())
    if run_id is None:
        if len(runs) != 1:
            raise ReportInputError(f"the {name} frame holds {len(runs)} runs; name the run_id to report on")
        run_id = runs[0]
    return frame[frame["run_id"].astype(str) == run_id], run_id


def _unscored_if_all_failed(cases: pd.DataFrame) -> pd.DataFrame:
    """A run whose every case failed has truth columns but no predictions: its report gives the failures by
    error code, with no finding scored, instead of refusing the frame."""
    if "status" not in cases.columns or cases.empty or (cases["status"] != "failed").any():
        return cases
    predicted = {str(c).split(".", 1)[1] for c in cases.columns if str(c).startswith((PROB_PREFIX, PRED_PREFIX))}
    return cases[[c for c in cases.columns
                  if not str(c).startswith(TRUTH_PREFIX) or str(c).split(".", 1)[1] in predicted]]


def build_report(
    cases: pd.DataFrame, tool_calls: pd.DataFrame | None = None, *, run_id: str | None = None,
    options: ReportOptions | None = None, title: str | None = None, run_config: Mapping[str, Any] | None = None,
    skipped_rows: int | None = None,
) -> StudyReport:
    """Validate the frames and compute every table of one run's report (plots are added by ``write_plots``).

    ``run_config``: the run's stored study configuration (default: ``options.run_config``, which
    :meth:`ReportOptions.from_study` sets); ``skipped_rows``: the malformed dataset rows the run skipped
    (``vqa_report.skipped_rows_of(store.metrics(run_id))``); both are read by VQA runs only."""
    options = options or ReportOptions()
    cases = _unscored_if_all_failed(cases)
    validate_cases(cases)
    cases, run_id = _single_run(cases, run_id, "cases")
    if cases.empty:
        raise ReportInputError("the cases frame has no row for this run")
    provenance = report_provenance(cases)
    if options.findings is not None:  # the other findings' truth and prediction columns are left out
        wanted = set(options.findings)
        cases = cases[[c for c in cases.columns if not str(c).startswith((TRUTH_PREFIX, PROB_PREFIX, PRED_PREFIX))
                       or str(c).split(".", 1)[1] in wanted]]
    layout = validate_cases(cases)
    calls = empty_tool_calls() if tool_calls is None else tool_calls
    validate_tool_calls(calls)
    calls = calls[calls["run_id"].astype(str) == run_id]
    findings, summaries = finding_metrics(cases, layout, options.thresholds, options.bootstrap)
    failures = pd.to_numeric(cases.get("assessment.failed", pd.Series(dtype=float)), errors="coerce")
    vqa = summarise_vqa(cases, options.run_config if run_config is None else run_config, skipped_rows, options)
    # a VQA run's subgroups (question type, modality, ...) are broken down by its own tables
    subgroups = [] if vqa is not None and not layout.findings else subgroup_tables(
        cases, layout, options.thresholds, options.bootstrap, options.small_group)
    return StudyReport(
        run_id=run_id, title=title or f"Study report: run {run_id}", options=options,
        outcomes=case_outcomes(cases), findings=findings, summaries=summaries, subgroups=subgroups,
        tools=tool_usage(calls), tokens=token_usage(cases),
        dialogue=summarise_dialogues(cases, options.bootstrap), assessor_failures=int(failures.fillna(0).sum()),
        vqa=vqa, provenance=provenance,
    )


class ComparisonRow(BaseModel):
    finding: str
    threshold: float | None
    metric: str
    values: dict[str, MetricValue | None]
    """run_id -> value; None when that run has no such finding/threshold."""


class RunComparison(BaseModel):
    run_ids: list[str]
    rows: list[ComparisonRow]
    untrained_runs: list[str] = Field(default_factory=list, description="runs with untrained (test-only) results")

    def to_frame(self) -> pd.DataFrame:
        """Flat table: finding, threshold, metric, then ``<run>``, ``<run>.ci_low``, ``<run>.ci_high`` per run."""
        records = []
        for row in self.rows:
            record: dict[str, object] = {"finding": row.finding, "threshold": row.threshold, "metric": row.metric}
            for run in self.run_ids:
                value = row.values.get(run)
                record[run] = value.value if value else None
                record[f"{run}.ci_low"] = value.ci_low if value else None
                record[f"{run}.ci_high"] = value.ci_high if value else None
            records.append(record)
        return pd.DataFrame.from_records(records)


def compare_runs(reports: Sequence[StudyReport]) -> RunComparison:
    """Side by side per (finding, threshold, metric), then the macro averages; keys in first-seen order."""
    run_ids = [r.run_id for r in reports]
    if len(set(run_ids)) != len(run_ids):
        raise ReportInputError("each run may appear only once in a comparison")
    rows: dict[tuple[str, float | None, str], ComparisonRow] = {}
    for report in reports:
        entries = [(f.finding, f.threshold, f) for f in report.findings]
        for finding, threshold, entry in entries:
            for metric in METRIC_NAMES:
                key = (finding, threshold, metric)
                empty = ComparisonRow(finding=finding, threshold=threshold, metric=metric, values={})
                row = rows.setdefault(key, empty)
                row.values[report.run_id] = entry.metric(metric)
        macro = next(s for s in report.summaries if s.average == "macro")
        for metric in METRIC_NAMES:
            row = rows.setdefault((MACRO_ROW, None, metric),
                                  ComparisonRow(finding=MACRO_ROW, threshold=None, metric=metric, values={}))
            row.values[report.run_id] = macro.metrics[metric]
    for row in rows.values():
        for run in run_ids:
            row.values.setdefault(run, None)
    ordered = sorted(rows.values(), key=lambda r: r.finding == MACRO_ROW)  # stable: macro rows last
    untrained = [report.run_id for report in reports if report.provenance.untrained]
    return RunComparison(run_ids=run_ids, rows=ordered, untrained_runs=untrained)
