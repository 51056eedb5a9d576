"""The dialogue-benchmark part of a study report: built from the cases frame's ``dialogue.*``,
``rubric.*``, ``assessment.*`` and ``subgroup.*`` columns (written by the dialogue graph)."""

from __future__ import annotations

import pandas as pd

from medagent.dialogue.labels import NONE_LABEL, Label, LabelSet
from medagent.reports.bootstrap import BootstrapConfig
from medagent.reports.dialogue_metrics import (
    DIALOGUE_METRICS,
    DialogueMetrics,
    DialogueRow,
    DialogueSummary,
    dialogue_summary,
)

TRUTH, PREDICTION, LABEL_SET = "dialogue.truth", "dialogue.prediction", "dialogue.label_set"
# temperament and bias first: the breakdowns 3MDBench and AgentClinic report
_FIRST_GROUPS = ("temperament", "bias")

Table = tuple[str, list[str], list[list[str]]]  # caption, headers, rows


def _text(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def dialogue_rows(cases: pd.DataFrame) -> list[DialogueRow]:
    """One row per succeeded dialogue case run (failed runs have no transcript to score)."""
    if TRUTH not in cases.columns:
        return []
    rows = []
    rubric_columns = [c for c in cases.columns if str(c).startswith("rubric.")]
    group_columns = [c for c in cases.columns if str(c).startswith("subgroup.")]
    for record in cases[cases["status"] == "succeeded"].to_dict("records"):
        truth = _text(record.get(TRUTH))
        if truth is None:
            continue
        rubric = {str(c).removeprefix("rubric."): int(record[c]) for c in rubric_columns if _text(record.get(c))}
        groups = {str(c).removeprefix("subgroup."): str(record[c]) for c in group_columns if _text(record.get(c))}
        rows.append(DialogueRow(case_id=str(record["case_id"]), truth=truth, prediction=_text(record.get(PREDICTION)),
                                groups=groups, rubric=rubric, overall=_text(record.get("assessment.overall"))))
    return rows


def summarise_dialogues(cases: pd.DataFrame, bootstrap: BootstrapConfig) -> DialogueSummary | None:
    rows = dialogue_rows(cases)
    if not rows:
        return None
    # stored truths and predictions are already the label set's names: an open set of them maps each to itself
    names = sorted({row.truth for row in rows} | {row.prediction for row in rows if row.prediction} - {NONE_LABEL})
    stored = cases[LABEL_SET].dropna() if LABEL_SET in cases.columns else pd.Series(dtype=object)
    label_set = LabelSet(name=str(stored.iloc[0]) if len(stored) else "open",
                         labels=[Label(name=name) for name in names], closed=False)
    found = {group for row in rows for group in row.groups}
    groups = [g for g in _FIRST_GROUPS if g in found] + sorted(found - set(_FIRST_GROUPS))
    return dialogue_summary(rows, label_set, groups, bootstrap=bootstrap.n_resamples,
                            confidence=bootstrap.confidence, seed=bootstrap.seed)


def _metric_cells(metrics: DialogueMetrics, rubric_items: list[str]) -> list[str]:
    from medagent.reports.render import format_metric  # the renderer imports this module's caller

    return [format_metric(metrics.metric(name)) for name in DIALOGUE_METRICS] + \
        [format_metric(metrics.rubric.get(item)) for item in rubric_items]


def dialogue_tables(summary: DialogueSummary, assessor_failures: int) -> tuple[list[str], list[Table]]:
    """Paragraphs and tables of the report's dialogue section."""
    from medagent.reports.render import format_metric

    overall = summary.overall
    rubric_items = sorted(overall.rubric)
    headers = ["n", *DIALOGUE_METRICS, *rubric_items]
    paragraphs = [
        (f"{overall.n_observations} dialogues over {overall.n_cases} cases; label set '{summary.label_set}'. "
         "Weighted F1 averages per-diagnosis F1 weighted by how often each is the truth; a missing or 'none' "
         "diagnosis counts as wrong and in the none rate. Rubric items are the share of dialogues scoring 1."),
        f"Assessor failures (output that did not parse after its re-asks): {assessor_failures}.",
    ]
    tables: list[Table] = [("Overall", headers, [[str(overall.n_observations),
                                                  *_metric_cells(overall, rubric_items)]])]
    if overall.overall_competence:
        levels = sorted(overall.overall_competence)
        tables.append(("Overall competence (assessor)", levels,
                       [[format_metric(overall.overall_competence[level]) for level in levels]]))
    for table in summary.groups:
        rows = [[row.value + (" (small)" if row.small else ""), str(row.metrics.n_observations),
                 *_metric_cells(row.metrics, rubric_items)] for row in table.rows]
        tables.append((f"Per {table.group}", [table.group, *headers], rows))
    return paragraphs, tables
