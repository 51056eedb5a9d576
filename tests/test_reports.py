"""Study reports: metrics checked by hand, bootstrap behaviour, subgroups, operations, plots, rendering, export."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medagent.errors import ConfigurationError
from medagent.reports import (
    BootstrapConfig,
    ReportInputError,
    ReportOptions,
    build_report,
    compare_runs,
    export,
    render_html,
    render_markdown,
    write_plots,
)
from medagent.reports.bootstrap import weighted_auroc

# 4 positives, 3 negatives. At t=0.5: TP 3 (0.9, 0.8, 0.7), FN 1 (0.2), FP 1 (0.6), TN 2 (0.3, 0.1).
# AUROC by hand: of the 12 (positive, negative) pairs the positive scores higher in 3+3+3+1 = 10.
TRUTH = [1, 1, 1, 1, 0, 0, 0]
PROB = [0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1]
FAST = BootstrapConfig(n_resamples=300, seed=7)


def cases_frame(
    truth: list[float], prob: list[float] | None = None, *, run_id: str = "run-a", finding: str = "effusion",
    pred: list[float] | None = None, prefix: str = "c", **extra: list[object],
) -> pd.DataFrame:
    """A valid cases frame; ``subgroup__sex=[...]`` adds the column ``subgroup.sex``."""
    n = len(truth)
    frame = pd.DataFrame({
        "run_id": run_id, "case_id": [f"{prefix}{i}" for i in range(n)], "repeat": 0, "status": "succeeded",
        "error_code": None, "prompt_tokens": 100.0, "completion_tokens": 10.0, "latency_s": np.linspace(1, 2, n),
        f"truth.{finding}": np.asarray(truth, dtype=float),
    })
    if prob is not None:
        frame[f"prob.{finding}"] = np.asarray(prob, dtype=float)
    if pred is not None:
        frame[f"pred.{finding}"] = np.asarray(pred, dtype=float)
    for column, values in extra.items():
        frame[column.replace("__", ".")] = values
    return frame


def tool_calls_frame(run_id: str = "run-a") -> pd.DataFrame:
    return pd.DataFrame({
        "run_id": run_id, "case_id": ["c0", "c0", "c1", "c2", "c3"], "repeat": 0,
        "tool": ["classify", "classify", "classify", "segment", "segment"],
        "ok": [True, False, True, True, False], "error_code": [None, "timeout", None, None, "precondition_failed"],
        "duration_s": [1.0, 2.0, 4.0, 0.5, 0.25],
    })


def pairwise_auroc(truth: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[truth == 1], score[truth == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_metrics_match_hand_computation() -> None:
    report = build_report(cases_frame(TRUTH, PROB), options=ReportOptions(bootstrap=FAST))
    (entry,) = report.findings
    assert (entry.confusion.tp, entry.confusion.fn, entry.confusion.fp, entry.confusion.tn) == (3, 1, 1, 2)
    assert entry.sensitivity.value == pytest.approx(3 / 4) and entry.sensitivity.n == 4
    assert entry.specificity.value == pytest.approx(2 / 3) and entry.specificity.n == 3
    assert entry.accuracy.value == pytest.approx(5 / 7)
    assert entry.f1.value == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert entry.auroc.value == pytest.approx(10 / 12)


def test_auroc_equals_pairwise_count_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 60)
    score = np.round(np.clip(0.3 * truth + rng.random(60) * 0.7, 0, 1), 1)  # rounding makes ties
    report = build_report(cases_frame(list(truth), list(score)), options=ReportOptions(bootstrap=FAST))
    assert report.findings[0].auroc.value == pytest.approx(pairwise_auroc(truth, score))
    # a bootstrap weight is a multiplicity: weighting must equal repeating the rows
    weights = rng.integers(0, 4, size=(5, 60))
    expected = [pairwise_auroc(np.repeat(truth, w), np.repeat(score, w)) for w in weights]
    assert weighted_auroc(truth, score, weights.astype(float)) == pytest.approx(expected)


def test_several_thresholds_and_label_only_findings() -> None:
    frame = cases_frame(TRUTH, PROB)
    nodule = cases_frame([1, 0, 1, 0, 0, 1, 0], pred=[1, 0, 0, 0, 1, 1, 0], finding="nodule")
    frame[["truth.nodule", "pred.nodule"]] = nodule[["truth.nodule", "pred.nodule"]]
    options = ReportOptions(thresholds={"effusion": [0.5, 0.75]}, bootstrap=FAST)
    report = build_report(frame, options=options)
    by_key = {(f.finding, f.threshold): f for f in report.findings}
    assert by_key[("effusion", 0.75)].sensitivity.value == pytest.approx(2 / 4)
    assert by_key[("effusion", 0.75)].specificity.value == pytest.approx(3 / 3)
    label = by_key[("nodule", None)]
    assert label.source == "label" and label.sensitivity.value == pytest.approx(2 / 3)
    assert label.specificity.value == pytest.approx(3 / 4)
    assert label.auroc.value is None and label.auroc.reason == "no predicted probabilities"
    macro, weighted = report.summaries
    # summaries use each finding's first threshold: effusion at 0.5 (3/4, 4 positives), nodule (2/3, 3 positives)
    assert macro.metrics["sensitivity"].value == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert weighted.metrics["sensitivity"].value == pytest.approx((4 * 3 / 4 + 3 * 2 / 3) / 7)
    assert macro.metrics["auroc"].value == pytest.approx(10 / 12) and macro.metrics["auroc"].n == 1
    # a study that scores only some findings: the others are left out of every table
    only = build_report(frame, options=ReportOptions.from_study({"metrics": {"findings": ["nodule"],
                                                                             "bootstrap": 0}}))
    assert {f.finding for f in only.findings} == {"nodule"} and only.options.bootstrap.n_resamples == 0
    assert only.findings[0].sensitivity.value == pytest.approx(2 / 3)


def test_failed_unknown_and_missing_rows_are_left_out() -> None:
    frame = cases_frame([*TRUTH, 1, float("nan"), 0], [*PROB, 0.1, 0.9, float("nan")])
    frame.loc[7, ["status", "error_code"]] = ["failed", "timeout"]
    report = build_report(frame, options=ReportOptions(bootstrap=FAST))
    entry = report.findings[0]
    assert entry.n_observations == 7 and entry.n_missing_prediction == 1
    assert entry.sensitivity.value == pytest.approx(3 / 4)
    assert report.outcomes.failed == 1 and report.outcomes.failures[0].error_code == "timeout"


def test_single_class_gives_auroc_none_with_reason() -> None:
    report = build_report(cases_frame([1, 1, 1], [0.2, 0.7, 0.9]), options=ReportOptions(bootstrap=FAST))
    entry = report.findings[0]
    assert entry.auroc.value is None and "no negative" in (entry.auroc.reason or "")
    assert entry.specificity.value is None and entry.sensitivity.value == pytest.approx(2 / 3)


def test_bootstrap_contains_estimate_is_seeded_and_narrows() -> None:
    small = cases_frame(TRUTH * 3, PROB * 3)
    large = cases_frame(TRUTH * 30, PROB * 30)
    first = build_report(small, options=ReportOptions(bootstrap=FAST)).findings[0]
    again = build_report(small, options=ReportOptions(bootstrap=FAST)).findings[0]
    other_seed = build_report(small, options=ReportOptions(bootstrap=FAST.model_copy(update={"seed": 8}))).findings[0]
    many = build_report(large, options=ReportOptions(bootstrap=FAST)).findings[0]
    for name in ("accuracy", "sensitivity", "specificity", "f1", "auroc"):
        value = first.metric(name)
        assert value.ci_low <= value.value <= value.ci_high, name
        assert (value.ci_low, value.ci_high) == (again.metric(name).ci_low, again.metric(name).ci_high)
        wide, narrow = value.ci_high - value.ci_low, many.metric(name).ci_high - many.metric(name).ci_low
        assert narrow < wide, name
    assert (first.auroc.ci_low, first.auroc.ci_high) != (other_seed.auroc.ci_low, other_seed.auroc.ci_high)


def test_bootstrap_resamples_cases_not_repeats() -> None:
    single = cases_frame(TRUTH * 2, PROB * 2)
    repeated = pd.concat([single.assign(repeat=r) for r in range(3)], ignore_index=True)
    one = build_report(single, options=ReportOptions(bootstrap=FAST)).findings[0]
    three = build_report(repeated, options=ReportOptions(bootstrap=FAST)).findings[0]
    assert three.n_observations == 3 * one.n_observations and three.n_cases == one.n_cases
    # identical repeats add no evidence: same point and same interval as one repeat
    assert (three.auroc.value, three.auroc.ci_low, three.auroc.ci_high) == pytest.approx(
        (one.auroc.value, one.auroc.ci_low, one.auroc.ci_high))


def test_subgroup_tables_count_and_flag_small_groups() -> None:
    sex = ["F", "F", "M", "M", "F", None, "M"]
    report = build_report(cases_frame(TRUTH, PROB, subgroup__sex=sex), options=ReportOptions(bootstrap=FAST))
    (table,) = report.subgroups
    rows = {row.value: row for row in table.rows}
    assert set(rows) == {"F", "M", "unknown"}
    assert rows["F"].n_cases == 3 and rows["F"].small
    # F: truth 1,1,0 with p 0.9, 0.8, 0.6 -> sensitivity 2/2, specificity 0/1
    assert rows["F"].findings[0].sensitivity.value == pytest.approx(1.0)
    assert rows["F"].findings[0].specificity.value == pytest.approx(0.0)
    # M: truth 1,1,0 with p 0.7, 0.2, 0.1 -> sensitivity 1/2
    assert rows["M"].findings[0].sensitivity.value == pytest.approx(0.5)
    big_frame = cases_frame(TRUTH * 2, PROB * 2, subgroup__site=["a"] * 14)
    big = build_report(big_frame, options=ReportOptions(bootstrap=FAST))
    assert not big.subgroups[0].rows[0].small


def test_tool_usage_tokens_and_failures() -> None:
    frame = cases_frame(TRUTH, PROB)
    frame.loc[[1, 2], ["status", "error_code"]] = [["failed", "timeout"], ["failed", "timeout"]]
    frame.loc[3, ["status", "prompt_tokens"]] = ["failed", float("nan")]
    report = build_report(frame, tool_calls_frame(), options=ReportOptions(bootstrap=FAST))
    classify, segment = report.tools
    assert (classify.tool, classify.calls, classify.failures) == ("classify", 3, 1)
    assert classify.failure_rate == pytest.approx(1 / 3) and classify.error_codes == {"timeout": 1}
    assert classify.latency_median_s == pytest.approx(2.0)
    assert classify.latency_p90_s == pytest.approx(np.quantile([1.0, 2.0, 4.0], 0.9))
    assert segment.failure_rate == pytest.approx(0.5) and segment.error_codes == {"precondition_failed": 1}
    assert report.tokens.prompt_total == 600 and report.tokens.completion_total == 70
    assert report.tokens.cases_counted == 6 and report.tokens.per_case_mean == pytest.approx(110.0)
    assert [(f.error_code, f.count) for f in report.outcomes.failures] == [("timeout", 2), ("unknown", 1)]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda f: f.drop(columns=["latency_s"]), "latency_s"),
    (lambda f: f.assign(status="done"), "status"),
    (lambda f: f.assign(**{"prob.effusion": 1.5}), "prob.effusion"),
    (lambda f: f.drop(columns=["prob.effusion"]), "neither"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "duplicated"),
    (lambda f: f.assign(**{"truth.effusion": 2}), "truth.effusion"),
    (lambda f: pd.concat([f, f.assign(run_id="run-b")]), "run_id"),
])
def test_contract_violations_raise_clear_errors(mutate, message: str) -> None:
    with pytest.raises(ReportInputError, match=re.escape(message)):
        build_report(mutate(cases_frame(TRUTH, PROB)), options=ReportOptions(bootstrap=FAST))


def test_compare_runs_side_by_side() -> None:
    worse = [0.4, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1]  # first positive now missed: sensitivity 2/4
    frame = pd.concat([cases_frame(TRUTH, PROB), cases_frame(TRUTH, worse, run_id="run-b")], ignore_index=True)
    reports = [build_report(frame, run_id=run, options=ReportOptions(bootstrap=FAST)) for run in ("run-a", "run-b")]
    table = compare_runs(reports).to_frame()
    row = table[(table["finding"] == "effusion") & (table["metric"] == "sensitivity")].iloc[0]
    assert row["run-a"] == pytest.approx(3 / 4) and row["run-b"] == pytest.approx(2 / 4)
    assert row["run-a.ci_low"] <= row["run-a"] <= row["run-a.ci_high"]
    assert set(table["finding"]) == {"effusion", "macro average"}


def _png_ok(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def test_plots_render_and_export(tmp_path: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    evil = "<script>alert(1)</script>"
    frame = cases_frame(TRUTH, PROB, finding=evil, subgroup__site=["a|b"] * 7)
    report = build_report(frame, tool_calls_frame(), options=ReportOptions(bootstrap=FAST))
    plots = write_plots(report, frame, tool_calls_frame(), tmp_path / "plots")
    assert [p.kind for p in plots] == ["roc", "confusion", "latency"] and report.plots == plots
    for plot in plots:
        assert plot.path.parent == tmp_path / "plots" and "<" not in plot.path.name
        _png_ok(plot.path.read_bytes())
    assert matplotlib.get_backend() == backend

    page = render_html(report, compare_runs([report]))
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 3
    assert base64.b64decode(embedded[0]) == plots[0].path.read_bytes()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page
    markdown = render_markdown(report)
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    assert "a\\|b" in markdown and "0.750 (" in markdown  # sensitivity 3/4 with its interval


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(tmp_path: Path, fmt: str) -> None:
    frame = cases_frame(TRUTH, PROB, subgroup__sex=["F", "M", "F", "M", "F", "M", "F"])
    path = export(frame, tmp_path / f"cases.{fmt}", fmt)
    back = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    np.testing.assert_allclose(back["prob.effusion"], frame["prob.effusion"])
    assert list(back["case_id"]) == list(frame["case_id"]) and back["error_code"].isna().all()
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ConfigurationError, match="unknown export format"):
        export(frame, tmp_path / "cases.xlsx", "xlsx")  # type: ignore[arg-type]
