"""Render a :class:`StudyReport` as Markdown or as one self-contained HTML file.

Both renderers share one neutral layout (sections of paragraphs and tables) so they never
disagree. All text coming from data (finding names, subgroup values, tool names, error
codes) is escaped: ``html.escape`` everywhere, plus ``|`` in Markdown tables. The HTML
embeds its plots as base64 ``data:image/png`` URIs and loads no external asset.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from medagent.reports.metrics import METRIC_NAMES, FindingMetrics, MetricValue
from medagent.reports.report import RunComparison, StudyReport
from medagent.runtime.untrained import NOTICE


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class _Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, _Table]] = field(default_factory=list)


def format_metric(value: MetricValue | None) -> str:
    """``0.750 (95% CI 0.500-0.917)``, or a dash with the reason when undefined."""
    if value is None:
        return "-"
    if value.value is None:
        return f"- ({value.reason})" if value.reason else "-"
    if value.ci_low is None or value.ci_high is None:
        return f"{value.value:.3f}"
    return f"{value.value:.3f} ({value.ci_low:.3f}-{value.ci_high:.3f})"


def _optional(number: float | None, unit: str = "") -> str:
    return "-" if number is None else f"{number:.3g}{unit}"


def _threshold(entry: FindingMetrics) -> str:
    return "label" if entry.threshold is None else f"{entry.threshold:g}"


def _finding_table(entries: list[FindingMetrics]) -> _Table:
    rows = [[e.finding, _threshold(e), str(e.n_observations), f"{e.n_positive}/{e.n_negative}",
             *(format_metric(e.metric(m)) for m in METRIC_NAMES)] for e in entries]
    return _Table(["finding", "threshold", "n", "pos/neg", *METRIC_NAMES], rows)


def _sections(report: StudyReport, comparison: RunComparison | None) -> list[_Section]:
    o, b = report.outcomes, report.options.bootstrap
    produced = _Section("Produced by", report.provenance.lines())
    overview = _Section("Overview", [
        f"{o.observations} case runs ({o.cases} cases): {o.succeeded} succeeded, {o.failed} failed.",
        f"Case latency median {_optional(o.latency_median_s, ' s')}, p90 {_optional(o.latency_p90_s, ' s')}.",
        f"Intervals: {b.confidence:.0%} percentile bootstrap over cases, {b.n_resamples} resamples, seed {b.seed}.",
    ])
    sections = [produced, overview]
    if report.findings or (report.dialogue is None and report.vqa is None):
        findings = _Section("Metrics per finding", tables=[("", _finding_table(report.findings))])
        summary_rows = [[s.average, ", ".join(s.findings), *(format_metric(s.metrics[m]) for m in METRIC_NAMES)]
                        for s in report.summaries]
        findings.tables.append(("Averages over findings (first threshold of each)",
                                _Table(["average", "findings", *METRIC_NAMES], summary_rows)))
        sections.append(findings)
    if report.dialogue is not None:
        from medagent.reports.dialogue_report import dialogue_tables

        paragraphs, tables = dialogue_tables(report.dialogue, report.assessor_failures)
        sections.append(_Section("Diagnostic dialogues", paragraphs,
                                 [(caption, _Table(headers, rows)) for caption, headers, rows in tables]))
    if report.vqa is not None:
        from medagent.reports.vqa_render import vqa_sections

        for title, paragraphs, tables in vqa_sections(report.vqa):
            sections.append(_Section(title, paragraphs, [(caption, _Table(headers, rows))
                                                         for caption, headers, rows in tables]))
    if report.subgroups:
        groups = _Section("Subgroups", ["Groups marked small have fewer cases than the configured minimum."])
        for table in report.subgroups:
            rows = [[row.value + (" (small)" if row.small else ""), str(row.n_cases), *line[:1], *line[2:]]
                    for row in table.rows for line in _finding_table(row.findings).rows]
            groups.tables.append((table.subgroup, _Table(["value", "cases", "finding", "n", "pos/neg",
                                                          *METRIC_NAMES], rows)))
        sections.append(groups)
    tool_rows = [[t.tool, str(t.calls), str(t.failures), _optional(t.failure_rate), _optional(t.latency_median_s),
                  _optional(t.latency_p90_s), ", ".join(f"{k}: {v}" for k, v in t.error_codes.items())]
                 for t in report.tools]
    tool_headers = ["tool", "calls", "failures", "failure rate", "median s", "p90 s", "errors"]
    sections.append(_Section("Tool usage", [] if tool_rows else ["No tool calls."],
                             [("", _Table(tool_headers, tool_rows))] if tool_rows else []))
    t = report.tokens
    sections.append(_Section("Planner tokens", [
        (f"Total {t.total} ({t.prompt_total} prompt, {t.completion_total} completion) over {t.cases_counted} case "
         f"runs; per case mean {_optional(t.per_case_mean)}, median {_optional(t.per_case_median)}, "
         f"max {t.per_case_max}.")]))
    failures = [[f.error_code, str(f.count)] for f in o.failures]
    sections.append(_Section("Failed cases", [] if failures else ["None."],
                             [("", _Table(["error code", "cases"], failures))] if failures else []))
    if comparison is not None:
        rows = [[r.finding, "-" if r.threshold is None else f"{r.threshold:g}", r.metric,
                 *(format_metric(r.values.get(run)) for run in comparison.run_ids)] for r in comparison.rows]
        sections.append(_Section("Comparison of runs", tables=[("", _Table(
            ["finding", "threshold", "metric", *comparison.run_ids], rows))]))
    return sections


def _md(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _banner(report: StudyReport, comparison: RunComparison | None) -> str | None:
    """The untrained warning of the report, or of any run it is compared with."""
    banner = report.provenance.banner()
    others = [run for run in (comparison.untrained_runs if comparison else []) if run != report.run_id]
    if others:
        compared = f"Compared runs with untrained results: {', '.join(others)}."
        banner = f"{banner} {compared}" if banner else f"{NOTICE}. {compared}"
    return banner


def render_markdown(report: StudyReport, comparison: RunComparison | None = None) -> str:
    """Markdown report; plots are linked by file name (keep them beside the .md file)."""
    lines = [f"# {_md(report.title)}", ""]
    banner = _banner(report, comparison)
    if banner:  # before anything else: these numbers are not results
        lines += [f"> **{_md(banner)}**", ""]
    for section in _sections(report, comparison):
        lines += [f"## {_md(section.title)}", ""]
        lines += [line for p in section.paragraphs for line in (_md(p), "")]
        for caption, table in section.tables:
            if caption:
                lines += [f"### {_md(caption)}", ""]
            lines.append("| " + " | ".join(_md(h) for h in table.headers) + " |")
            lines.append("|" + "---|" * len(table.headers))
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in table.rows]
            lines.append("")
    if report.plots:
        lines += ["## Plots", ""]
        lines += [f"![{_md(p.title)}]({_md(p.path.name)})\n" for p in report.plots]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f2f2f2}figure{display:inline-block;margin:.5rem}figcaption{font-size:.9rem;color:#555}
.untrained{background:#b00020;color:#fff;padding:.75rem 1rem;font-size:1.1rem}"""


def render_html(report: StudyReport, comparison: RunComparison | None = None) -> str:
    """One self-contained HTML page: inline CSS, plots as base64 data URIs, every text escaped."""
    e = html.escape
    banner = _banner(report, comparison)
    marked = "UNTRAINED: " if banner else ""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{marked}{e(report.title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{e(report.title)}</h1>"]
    if banner:  # before anything else: these numbers are not results
        parts.append(f'<p class="untrained" role="alert"><strong>{e(banner)}</strong></p>')
    for section in _sections(report, comparison):
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        for caption, table in section.tables:
            if caption:
                parts.append(f"<h3>{e(caption)}</h3>")
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers) + "</tr></thead>")
            parts.append("<tbody>" + "".join(
                "<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in table.rows) + "</tbody>")
            parts.append("</table>")
    if report.plots:
        parts.append("<h2>Plots</h2>")
        for plot in report.plots:
            encoded = base64.b64encode(plot.path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{e(plot.title)}">'
                         f"<figcaption>{e(plot.title)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
