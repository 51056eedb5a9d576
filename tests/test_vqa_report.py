"""The VQA part of a study report: a real four-arm VQA study (no experts, experts, two noise severities) on real
radiographs, scored from the store's frames and checked against counts taken by hand from the stored rows; the
McNemar p-value against scipy's binomial test; the severity plot; Markdown and HTML sections with hostile dataset
text escaped; `medagent report --format html` on the run; and a non-VQA run without any VQA section."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest

from medagent.config import Settings
from medagent.reports import ReportOptions, build_report, render_html, render_markdown, write_plots
from medagent.reports.bootstrap import BootstrapConfig
from medagent.reports.vqa_report import skipped_rows_of, summarise_vqa
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import run_study
from tests.conftest import NIH_CARDIOMEGALY, NIH_NO_FINDING, TEST_SECRET

HOSTILE = "<script>alert(1)</script>"
OPTIONS = {"A": "cardiomegaly", "B": "pneumothorax", "C": "no finding"}
# id: (gold, question_type, pair role); choice questions have options, yes/no and open ones none
QUESTIONS: dict[str, tuple[str, str, str | None]] = {
    "q00": ("A", "abnormality", None), "q01": ("B", "abnormality", None), "q02": ("C", HOSTILE, None),
    "q03": ("A", HOSTILE, None), "q04": ("yes", "presence", None), "q05": ("no", "presence", None),
    "q06": ("yes", "presence", "ground_truth"), "q07": ("no", "presence", "adversarial"),
    "q08": ("B", "abnormality", None), "q09": ("A", "abnormality", None), "q10": ("heart", "organ", None),
    "q11": ("left lung", "organ", None),
}
# what each arm's planner answers: 'Z' names no option (an unparsed reply)
ANSWERS = {
    "bare": ["A", "A", "C", "B", "yes", "yes", "yes", "yes", "Z", "A", "heart", "right lung"],
    "experts": ["A", "B", "C", "A", "yes", "no", "yes", "no", "B", "B", "the heart", "left lung"],
    "noisy": ["A", "B", "A", "A", "yes", "yes", "yes", "no", "C", "B", "heart", "lung"],
    "noisier": ["B", "C", "A", "Z", "no", "yes", "yes", "yes", "C", "B", "liver", "lung"],
}
ARMS = {"bare": {"experts": "none"}, "experts": {},
        "noisy": {"corruption": {"kind": "gaussian_noise", "severity": 2}},
        "noisier": {"corruption": {"kind": "gaussian_noise", "severity": 4}}}
FAST = ReportOptions(bootstrap=BootstrapConfig(n_resamples=200, seed=3))


def _write_questions(folder: Path) -> None:
    for index, image in enumerate((NIH_CARDIOMEGALY, NIH_NO_FINDING)):
        shutil.copy(image, folder / f"cxr{index}.png")
    rows = []
    for number, (qid, (gold, question_type, role)) in enumerate(QUESTIONS.items()):
        row: dict[str, Any] = {"id": qid, "image": f"cxr{number % 2}.png", "case_id": f"c{number // 2}",
                               "question": f"{qid.upper()}: what does the image show?", "answer": gold,
                               "question_type": question_type, "modality": "DX" if number < 6 else "CR"}
        if len(gold) == 1:
            row["options"] = OPTIONS
        if role:
            row |= {"pair_id": "p1", "pair_role": role}
        rows.append(row)
    rows.append({**rows[0], "id": "bad", "answer": "SECRET-Z"})  # a gold letter no option has: skipped, counted
    (folder / "questions.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")


def _planner(arm: str) -> dict[str, Any]:
    answers = {qid.upper(): answer for qid, answer in zip(QUESTIONS, ANSWERS[arm], strict=True)}
    return {"backend": {"_target_": "tests.vqa_parts.answering_planner", "kwargs": {"answers": answers}}}


def _study(folder: Path) -> Path:
    study = {
        "name": "vqa-report", "planners": {"planner": _planner("bare")},
        "graph": {"type": "vqa", "mode": "expert_then_answer", "steps": [{"tool": "assess_image_quality"}]},
        "dataset": {"type": "questions", "path": "questions.jsonl", "modality": "DX", "skip_malformed": True},
        "experts": ["assess_image_quality"],
        "arms": [{"name": name, **settings, "planners": {"planner": _planner(name)}}
                 for name, settings in ARMS.items()],
        "concurrency": {"cases": 8},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@dataclass
class Run:
    home: Path
    cases: pd.DataFrame
    calls: pd.DataFrame
    config: dict[str, Any]
    skipped: int


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("vqa-report")
    _write_questions(folder)
    settings = Settings(home=folder / "home", xrv_cache_dir=folder / "xrv")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
        config = load_study(_study(folder), allowed_prefixes=("medagent.", "tests."))

        async def go() -> None:
            with StudyStore.open(None, settings.home) as store:
                events = [event async for event in run_study(config, store=store, settings=settings, run_id="vqa")]
                assert events[-1].kind == "finished"

        asyncio.run(go())
    with StudyStore.open(None, settings.home) as store:
        stored = store.get_run("vqa")
        assert stored is not None
        return Run(settings.home, store.cases_frame("vqa"), store.tool_calls_frame("vqa"), dict(stored.config),
                   skipped_rows_of(store.metrics("vqa")))


def _correct(frame: pd.DataFrame, arm: str) -> dict[str, bool]:
    """question id -> right, for one arm, read from the stored rows (unparsed: wrong)."""
    rows = frame[frame["vqa.arm"] == arm]
    return {qid: value == 1 for qid, value in zip(rows["vqa.question_id"], rows["vqa.correct"], strict=True)}


def test_the_with_and_without_experts_table_matches_mcnemar_on_the_stored_discordant_pairs(vqa_run: Run) -> None:
    report = build_report(vqa_run.cases, vqa_run.calls, run_id="vqa",
                          options=FAST.model_copy(update={"run_config": vqa_run.config}), skipped_rows=vqa_run.skipped)
    assert report.vqa is not None and report.vqa.baseline == "bare"  # the first arm with experts: none
    bare = _correct(vqa_run.cases, "bare")
    assert len(bare) == len(QUESTIONS)
    for arm in ("experts", "noisy", "noisier"):
        other = _correct(vqa_run.cases, arm)
        b = sum(bare[q] and not other[q] for q in QUESTIONS)
        c = sum(other[q] and not bare[q] for q in QUESTIONS)
        [row] = [row for row in report.vqa.comparisons if row.arm == arm]
        assert (row.mcnemar.b, row.mcnemar.c, row.n_paired) == (b, c, len(QUESTIONS))
        assert row.mcnemar.p_value == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue)
        assert row.difference.value == pytest.approx((c - b) / len(QUESTIONS))
    [experts] = [row for row in report.vqa.comparisons if row.arm == "experts"]
    assert (experts.mcnemar.b, experts.mcnemar.c) == (1, 6)  # q09 / q01 q03 q05 q07 q08 q11: as designed
    assert experts.difference.ci_low is not None and experts.difference.ci_low <= experts.difference.value


def test_accuracies_parse_failures_pairs_and_open_answers_match_a_hand_count(vqa_run: Run) -> None:
    report = build_report(vqa_run.cases, vqa_run.calls, run_id="vqa",
                          options=FAST.model_copy(update={"run_config": vqa_run.config}), skipped_rows=vqa_run.skipped)
    summary = report.vqa
    assert summary is not None and summary.memory == ["fresh"] and summary.skipped_rows == 1
    overall = {row.arm: row for row in summary.overall}
    for arm in ARMS:
        right = sum(_correct(vqa_run.cases, arm).values())
        unparsed = ANSWERS[arm].count("Z")
        assert overall[arm].accuracy.value == pytest.approx(right / 12)
        assert overall[arm].parse_failure_rate.value == pytest.approx(unparsed / 12)
        assert overall[arm].parsed_accuracy.value == pytest.approx(right / (12 - unparsed))
        assert overall[arm].chance == pytest.approx(np.mean([1 / 3] * 6 + [0.5] * 4))
    assert [overall[arm].accuracy.value for arm in ARMS] == pytest.approx([6 / 12, 11 / 12, 7 / 12, 1 / 12])
    by_type = {(row.arm, row.value): row for group in summary.groups if group.group == "question_type"
               for row in group.rows}
    assert by_type[("bare", HOSTILE)].accuracy.value == pytest.approx(1 / 2)  # q02 right, q03 wrong
    assert by_type[("experts", "presence")].accuracy.value == 1.0
    kinds = {(row.arm, row.value): row.accuracy.value for row in summary.by_kind}
    assert kinds[("bare", "yes_no")] == pytest.approx(2 / 4) and kinds[("noisier", "open")] == 0.0
    [probmed] = [row for row in summary.probmed if row.arm == "experts"]
    assert (probmed.n_sets, probmed.accuracy.value, probmed.chance) == (1, 1.0, 0.25)
    assert [row.accuracy.value for row in summary.probmed if row.arm == "bare"] == [0.0]  # q07 wrong
    open_rows = {row.arm: row for row in summary.open_answers}
    assert open_rows["bare"].exact_match.value == pytest.approx(1 / 2)  # heart right, right lung wrong
    assert open_rows["bare"].token_f1.value == pytest.approx((1.0 + 0.5) / 2)
    assert open_rows["noisy"].token_recall.value == pytest.approx((1.0 + 0.5) / 2)
    curve = {point.arm: (point.severity, point.accuracy.value) for c in summary.severity for point in c.points}
    assert [c.corruption for c in summary.severity] == ["gaussian_noise"]
    assert curve == {"bare": (0.0, 0.5), "noisy": (2.0, pytest.approx(7 / 12)), "noisier": (4.0, pytest.approx(1 / 12))}


def test_plots_markdown_and_html_carry_the_vqa_sections_with_dataset_text_escaped(vqa_run: Run, tmp_path: Path) -> None:
    report = build_report(vqa_run.cases, vqa_run.calls, run_id="vqa",
                          options=FAST.model_copy(update={"run_config": vqa_run.config}), skipped_rows=3)
    write_plots(report, vqa_run.cases, vqa_run.calls, tmp_path)
    [severity] = [plot for plot in report.plots if plot.kind == "severity"]
    assert severity.path.read_bytes().startswith(b"\x89PNG") and severity.path.parent == tmp_path
    markdown, page = render_markdown(report), render_html(report)
    for title in ("VQA accuracy", "Per question_type", "VQA open questions", "VQA pairs and sets",
                  "VQA arms compared with the baseline", "With and without experts",
                  "VQA accuracy vs corruption severity", "Malformed dataset rows skipped: 3",
                  "each question ran in a fresh session"):
        assert title in markdown and title in page
    assert "Metrics per finding" not in markdown  # a VQA run scores no findings
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "SECRET" not in markdown + page  # the skipped row is counted, never quoted
    assert "vqa_severity.png" in markdown and page.count("data:image/png;base64,") == len(report.plots)


def test_medagent_report_renders_a_vqa_run_as_html(vqa_run: Run, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from medagent.cli.main import app

    monkeypatch.setenv("MEDAGENT_HOME", str(vqa_run.home))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    done = CliRunner().invoke(app, ["report", "vqa", "--format", "html", "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert "With and without experts" in page and "VQA accuracy vs corruption severity" in page
    assert HOSTILE not in page and (tmp_path / "out" / "vqa_severity.png").is_file()
    assert "Malformed dataset rows skipped: 1." in page


def test_a_hand_built_frame_pools_rare_values_counts_failures_and_matches_the_clean_arm(vqa_run: Run) -> None:
    """Arms alike but for the corruption share a curve starting at their clean twin; a group with hundreds of
    values is pooled; failed questions and unreadable rows are counted per arm, never scored."""
    frame = vqa_run.cases[vqa_run.cases["vqa.arm"].isin(["bare", "experts", "noisy"])].reset_index(drop=True)
    frame["subgroup.category"] = frame["subgroup.category"].astype(object) if "subgroup.category" in frame else None
    for arm, prefix in (("experts", "common"), ("bare", "rare")):
        frame.loc[frame["vqa.arm"] == arm, "subgroup.category"] = [f"{prefix} {n:02d}" for n in range(12)]
    frame["vqa.parsed"] = frame["vqa.parsed"].astype(object)
    for qid, role in (("q00", "image_1"), ("q01", "image_2")):  # a MediConfusion set in the experts arm
        at = (frame["vqa.arm"] == "experts") & (frame["vqa.question_id"] == qid)
        frame.loc[at, ["vqa.pair_id", "vqa.pair_role"]] = ["m1", role]
    frame.loc[frame.index[frame["vqa.arm"] == "noisy"][0], "vqa.parsed"] = "garbled"
    failed = pd.concat([frame.iloc[[1]].assign(case_id="noisy:q99", status="failed", **{"vqa.arm": None}),
                        frame.iloc[[2]].assign(case_id="q98", status="failed", **{"vqa.arm": "bare"})])
    frame = pd.concat([frame, failed], ignore_index=True)
    config = {"graph": {"type": "vqa"}, "arms": [
        {"name": "bare", "experts": [], "planners": {}}, {"name": "experts", "experts": None, "planners": {}},
        {"name": "noisy", "experts": None, "planners": {},
         "corruption": {"kind": "gaussian_noise", "severity": 2, "seed": 0}}]}
    summary = summarise_vqa(frame, config, None, FAST)
    assert summary is not None and summary.skipped_rows is None and summary.left_out == 1
    assert {arm.name: arm.failed for arm in summary.arms} == {"bare": 1, "experts": 0, "noisy": 1}
    assert {row.arm: row.n for row in summary.overall} == {"bare": 12, "experts": 12, "noisy": 11}
    [confusion] = summary.mediconfusion  # answered A and B, both right: no confusion
    assert (confusion.arm, confusion.accuracy.value, confusion.confusion_rate.value) == ("experts", 1.0, 0.0)
    assert confusion.chance == pytest.approx(1 / 9) and confusion.confusion_chance == pytest.approx(1 / 3)
    assert {row.arm for row in summary.probmed} == {"bare", "experts", "noisy"} and not summary.other_sets
    [curve] = summary.severity  # noisy's clean twin is the experts arm, not the baseline
    assert [(point.arm, point.severity) for point in curve.points] == [("experts", 0.0), ("noisy", 2.0)]
    [category] = [group for group in summary.groups if group.group == "category"]
    assert category.pooled_values == 0 and len(category.rows) == 24 + 1  # and noisy's 'unknown'
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medagent.reports.vqa_report.MAX_GROUP_VALUES", 5)
        pooled = summarise_vqa(frame, config, None, FAST)
    assert pooled is not None
    [category] = [group for group in pooled.groups if group.group == "category"]
    assert category.pooled_values == 24 - 5
    assert {(row.arm, row.value) for row in category.rows} == {
        *(("experts", f"common {n:02d}") for n in range(5)), ("experts", "(other values)"),
        ("bare", "(other values)"), ("noisy", "unknown")}


def test_a_run_without_questions_has_no_vqa_section() -> None:
    from tests.test_reports import FAST as FINDINGS_FAST
    from tests.test_reports import PROB, TRUTH, cases_frame

    report = build_report(cases_frame(TRUTH, PROB), options=ReportOptions(bootstrap=FINDINGS_FAST))
    assert report.vqa is None
    assert summarise_vqa(cases_frame(TRUTH, PROB), {"graph": {"type": "pipeline"}}, 0, FAST) is None
    assert "VQA" not in render_markdown(report) and "VQA" not in render_html(report)
