"""Study reports from plain pandas frames: metrics with bootstrap intervals, plots, Markdown/HTML, export.

Typical use (the study runner flattens its SQL rows into the two frames of
:mod:`medagent.reports.schema`)::

    report = build_report(cases, tool_calls, options=ReportOptions(thresholds={"Cardiomegaly": [0.5, 0.7]}))
    write_plots(report, cases, tool_calls, out_dir)
    Path(out_dir, "report.html").write_text(render_html(report))

Heavy libraries (scikit-learn, matplotlib, pyarrow) are imported inside the functions that need them.
"""

from medagent.reports.bootstrap import BootstrapConfig
from medagent.reports.export import ExportFormat, export
from medagent.reports.metrics import (
    METRIC_NAMES,
    Confusion,
    FindingMetrics,
    MetricValue,
    SubgroupRow,
    SubgroupTable,
    SummaryMetrics,
    finding_metrics,
    subgroup_tables,
)
from medagent.reports.operations import (
    CaseOutcomes,
    FailureCount,
    TokenUsage,
    ToolUsage,
    case_outcomes,
    token_usage,
    tokens_per_case,
    tool_usage,
)
from medagent.reports.plots import write_plots
from medagent.reports.render import format_metric, render_html, render_markdown
from medagent.reports.report import (
    ComparisonRow,
    PlotFile,
    ReportOptions,
    RunComparison,
    StudyReport,
    build_report,
    compare_runs,
)
from medagent.reports.schema import (
    CASE_COLUMNS,
    TOOL_CALL_COLUMNS,
    CasesLayout,
    ReportInputError,
    empty_tool_calls,
    validate_cases,
    validate_tool_calls,
)

__all__ = [
    "CASE_COLUMNS", "METRIC_NAMES", "TOOL_CALL_COLUMNS", "BootstrapConfig", "CaseOutcomes", "CasesLayout",
    "ComparisonRow", "Confusion", "ExportFormat", "FailureCount", "FindingMetrics", "MetricValue", "PlotFile",
    "ReportInputError", "ReportOptions", "RunComparison", "StudyReport", "SubgroupRow", "SubgroupTable",
    "SummaryMetrics", "TokenUsage", "ToolUsage", "build_report", "case_outcomes", "compare_runs", "empty_tool_calls",
    "export", "finding_metrics", "format_metric", "render_html", "render_markdown", "subgroup_tables",
    "token_usage", "tokens_per_case", "tool_usage", "validate_cases", "validate_tool_calls", "write_plots",
]
