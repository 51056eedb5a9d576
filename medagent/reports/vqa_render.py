"""The VQA sections of a study report as neutral paragraphs and tables (the renderer escapes every cell).

Each figure has its chance level beside it; accuracy counts unparsed replies as wrong, with the parse-failure rate
and the accuracy among parsed replies next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from medagent.reports.metrics import MetricValue
from medagent.reports.paired import PairRow
from medagent.reports.vqa_arms import ArmInfo
from medagent.reports.vqa_metrics import VqaAccuracyRow
from medagent.reports.vqa_report import OTHER_VALUES, VqaSummary

Table = tuple[str, list[str], list[list[str]]]  # caption, headers, rows
Section = tuple[str, list[str], list[Table]]  # title, paragraphs, tables
RowOfArm = TypeVar("RowOfArm", bound=PairRow)

_MEMORY = {"fresh": "each question ran in a fresh session (no question saw another's messages)",
           "kept": "the questions of one case kept the case's memory (each saw the case's earlier questions and "
                   "the answers given)"}


def _fmt(value: MetricValue | None) -> str:
    from medagent.reports.render import format_metric  # the renderer imports this module

    return format_metric(value)


def _chance(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _arm_order(arms: Sequence[ArmInfo]) -> dict[str, int]:
    return {arm.name: index for index, arm in enumerate(arms)}


def _ordered(rows: Sequence[VqaAccuracyRow], order: dict[str, int]) -> list[VqaAccuracyRow]:
    return sorted(rows, key=lambda row: (order.get(row.arm, len(order)), row.value == OTHER_VALUES, row.value or ""))


def _experts(arm: ArmInfo | None) -> str:
    if arm is None:
        return "-"
    return "none" if arm.no_experts else "-" if arm.experts is None else str(arm.experts)


def _arm_cells(arm: ArmInfo | None) -> list[str]:
    """The arm's experts and corruption, the settings the with/without tables compare."""
    return [_experts(arm), "-" if arm is None else arm.corruption or "none"]


def _accuracy_rows(rows: Sequence[VqaAccuracyRow], order: dict[str, int], *, by: bool) -> list[list[str]]:
    return [[row.arm, *([(row.value or "-") + (" (small)" if row.small else "")] if by else []), str(row.n),
             str(row.n_cases), _fmt(row.accuracy), _chance(row.chance), _fmt(row.parsed_accuracy),
             _fmt(row.parse_failure_rate)] for row in _ordered(rows, order)]


def _overview(summary: VqaSummary) -> list[str]:
    memory = "; ".join(_MEMORY.get(mode, mode) for mode in summary.memory) or "not recorded"
    failed = ", ".join(f"{arm.name} {arm.failed}" for arm in summary.arms if arm.failed)
    skipped = "not given" if summary.skipped_rows is None else str(summary.skipped_rows)
    paragraphs = [
        (f"{summary.answered} answered questions over {len(summary.arms)} arm(s); mode "
         f"{', '.join(summary.modes) or '-'}. Memory: {memory}."),
        ("Accuracy counts an unparsed reply as wrong; the parse-failure rate and the accuracy among parsed replies "
         "stand beside it. Chance is the accuracy of uniform guessing over each question's options (yes/no: 0.5; "
         "open questions have none). Intervals resample cases: the questions of one case move together."),
        (f"Answers under a schema constraint: {summary.constrained} of {summary.answered}. "
         f"Malformed dataset rows skipped: {skipped}."),
    ]
    if failed:
        paragraphs.append(f"Questions that failed without an answer, left out of every figure: {failed}.")
    if summary.left_out:
        paragraphs.append(f"Rows whose answer record could not be read, left out: {summary.left_out}.")
    return paragraphs


def _accuracy_section(summary: VqaSummary, order: dict[str, int]) -> Section:
    arms = {arm.name: arm for arm in summary.arms}
    overall = [[name, *_arm_cells(arms.get(name)), *cells, str(arms[name].failed if name in arms else 0)]
               for name, *cells in _accuracy_rows(summary.overall, order, by=False)]
    measures = ["n", "cases", "accuracy", "chance", "parsed accuracy", "parse failures"]
    tables: list[Table] = [("Per arm", ["arm", "experts", "corruption", *measures, "failed"], overall),
                           ("Per question kind", ["arm", "kind", *measures],
                            _accuracy_rows(summary.by_kind, order, by=True))]
    if summary.closed_open:
        tables.append(("Closed vs open questions", ["arm", "questions", *measures],
                       _accuracy_rows(summary.closed_open, order, by=True)))
    for group in summary.groups:
        caption = f"Per {group.group}" + (f" ({group.pooled_values} rarer values pooled as {OTHER_VALUES})"
                                          if group.pooled_values else "")
        tables.append((caption, ["arm", group.group, *measures], _accuracy_rows(group.rows, order, by=True)))
    return "VQA accuracy", _overview(summary), tables


def _open_section(summary: VqaSummary, order: dict[str, int]) -> Section | None:
    if not summary.open_answers and not summary.judge:
        return None
    def rank(arm: str) -> int:
        return order.get(arm, len(order))

    rows = [[row.arm, str(row.n), str(row.n_cases), _fmt(row.exact_match), _fmt(row.token_f1), _fmt(row.token_recall)]
            for row in sorted(summary.open_answers, key=lambda row: rank(row.arm))]
    tables: list[Table] = [("", ["arm", "n", "cases", "exact match", "token F1", "token recall"], rows)]
    if summary.judge:
        tables.append(("Judge (the study's assessor) on open answers", ["arm", "judged", "judge failures",
                                                                         "judged correct"],
                       [[row.arm, str(row.n_judged), str(row.failures), _fmt(row.accuracy)]
                        for row in sorted(summary.judge, key=lambda row: rank(row.arm))]))
    return ("VQA open questions", [("Open questions have no chance level; an unparsed reply scores 0. Exact match "
                                   "compares normalised text; token F1 and recall credit partial answers.")], tables)


def _sets_section(summary: VqaSummary, order: dict[str, int]) -> Section | None:
    def ranked(rows: Sequence[RowOfArm]) -> list[RowOfArm]:
        return sorted(rows, key=lambda row: order.get(row.arm, len(order)))

    tables: list[Table] = []
    if summary.probmed:
        tables.append(("ProbMed pair accuracy (both the ground-truth and the adversarial question right)",
                       ["arm", "pairs", "incomplete", "pair accuracy", "chance"],
                       [[r.arm, str(r.n_sets), str(r.n_incomplete), _fmt(r.accuracy), _chance(r.chance)]
                        for r in ranked(summary.probmed)]))
    if summary.mediconfusion:
        tables.append(("MediConfusion set accuracy and confusion (the same answer for both images)",
                       ["arm", "sets", "incomplete", "set accuracy", "chance", "confusion rate", "confusion chance"],
                       [[r.arm, str(r.n_sets), str(r.n_incomplete), _fmt(r.accuracy), _chance(r.chance),
                         _fmt(r.confusion_rate), _chance(r.confusion_chance)] for r in ranked(summary.mediconfusion)]))
    if summary.other_sets:
        tables.append(("Other question sets (every question of a set right)",
                       ["arm", "sets", "incomplete", "set accuracy", "chance"],
                       [[r.arm, str(r.n_sets), str(r.n_incomplete), _fmt(r.accuracy), _chance(r.chance)]
                        for r in ranked(summary.other_sets)]))
    return ("VQA pairs and sets", [], tables) if tables else None


def _comparison_section(summary: VqaSummary, order: dict[str, int]) -> Section | None:
    if not summary.comparisons:
        return None
    arms = {arm.name: arm for arm in summary.arms}
    chance = {row.arm: row.chance for row in summary.overall}
    rows = [[c.arm, *_arm_cells(arms.get(c.arm)), str(c.n_paired), str(c.n_cases), _fmt(c.baseline_accuracy),
             _fmt(c.arm_accuracy), _fmt(c.difference), str(c.mcnemar.b), str(c.mcnemar.c),
             f"{c.mcnemar.p_value:.4g}", _chance(chance.get(c.arm))]
            for c in sorted(summary.comparisons, key=lambda c: order.get(c.arm, len(order)))]
    baseline = summary.baseline or "-"
    return ("VQA arms compared with the baseline", [
        (f"Baseline: arm {baseline} (experts {_experts(arms.get(baseline))}), the first arm without experts, else "
         "the first arm. Each arm is paired with it on the same questions and repeats: the difference in accuracy "
         "(arm - baseline) with a paired case bootstrap interval, and McNemar's exact test on the discordant pairs "
         "(b: only the baseline right, c: only the arm right)."),
        f"Unpaired questions (in one arm only): {sum(c.n_unpaired for c in summary.comparisons)}."],
        [("With and without experts", ["arm", "experts", "corruption", "paired", "cases", "baseline accuracy",
                                       "arm accuracy", "difference", "b", "c", "McNemar p", "chance"], rows)])


def _severity_section(summary: VqaSummary) -> Section | None:
    if not summary.severity:
        return None
    rows = [[curve.corruption, f"{point.severity:g}", point.arm, _fmt(point.accuracy), _chance(curve.chance)]
            for curve in summary.severity for point in curve.points]
    return ("VQA accuracy vs corruption severity", [
        ("Severity 0 is the clean arm configured like the corrupted ones (else the baseline, if clean). "
         "The plot 'Accuracy vs corruption severity' shows the same figures.")],
        [("", ["corruption", "severity", "arm", "accuracy", "chance"], rows)])


def vqa_sections(summary: VqaSummary) -> list[Section]:
    """The report's VQA sections in reading order; empty ones are left out."""
    order = _arm_order(summary.arms)
    found = [_accuracy_section(summary, order), _open_section(summary, order), _sets_section(summary, order),
             _comparison_section(summary, order), _severity_section(summary)]
    return [section for section in found if section is not None]
