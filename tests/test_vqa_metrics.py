"""VQA scoring on hand-computed tables: accuracy with parse failures and chance, open-answer overlap, ProbMed pairs,
MediConfusion sets, McNemar's exact test against scipy, paired and case-level bootstrap intervals, severity plots."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from scipy.stats import binomtest

from medagent.errors import ResourceExhausted
from medagent.reports import vqa_metrics
from medagent.reports.paired import (
    compare_arms,
    mcnemar_exact,
    pair_accuracy,
    paired_bootstrap_difference,
    set_accuracy,
)
from medagent.reports.vqa_metrics import (
    VqaOutcome,
    VqaOutcomeError,
    accuracy_table,
    open_answer_table,
    plot_severity,
    severity_curve,
)

CHANCE = {"choice": 0.25, "yes_no": 0.5, "open": None}


def outcome(arm: str, question: str, case: str, correct: bool | None, *, kind: str = "choice", repeat: int = 0,
            chance: float | None | str = "auto", **fields: object) -> VqaOutcome:
    """``correct=None`` is an unparsed reply."""
    return VqaOutcome.model_validate({
        "arm": arm, "question_id": question, "case_id": case, "repeat": repeat, "kind": kind,
        "parsed": correct is not None, "correct": correct,
        "chance": CHANCE[kind] if chance == "auto" else chance, **fields})


# Arm "a": six questions in three cases. Correct: q1, q4, q5 (3/6); unparsed: q3, q6 (2/6); parsed: 4, correct 3.
# Chance: mean of 0.25, 0.25, 0.5, 0.5 (open questions have none) = 0.375.
# CT: q1 q2 q5 q6 -> 2/4 correct, 2/3 parsed correct, 1/4 unparsed, chance 0.25; MR: q3 q4 -> 1/2, 1/1, 1/2, 0.5.
ARM_A = [
    outcome("a", "q1", "c1", True, groups={"modality": "CT"}),
    outcome("a", "q2", "c1", False, groups={"modality": "CT"}),
    outcome("a", "q3", "c2", None, kind="yes_no", groups={"modality": "MR"}),
    outcome("a", "q4", "c2", True, kind="yes_no", groups={"modality": "MR"}),
    outcome("a", "q5", "c3", True, kind="open", groups={"modality": "CT"}),
    outcome("a", "q6", "c3", None, kind="open", groups={"modality": "CT"}),
]
ARM_B = [outcome("b", "q1", "c1", True), outcome("b", "q2", "c1", True)]  # no modality group: "unknown"


def test_accuracy_parse_failures_and_chance_by_hand() -> None:
    rows = {row.arm: row for row in accuracy_table(ARM_A + ARM_B, bootstrap=300, seed=1)}
    a = rows["a"]
    assert (a.n, a.n_cases, a.by, a.value, a.small) == (6, 3, None, None, True)
    assert a.accuracy.value == pytest.approx(0.5) and a.accuracy.n == 6
    assert a.parsed_accuracy.value == pytest.approx(0.75) and a.parsed_accuracy.n == 4
    assert a.parse_failure_rate.value == pytest.approx(2 / 6)
    assert a.chance == pytest.approx(0.375)
    assert a.accuracy.ci_low is not None and a.accuracy.ci_high is not None
    assert a.accuracy.ci_low <= 0.5 <= a.accuracy.ci_high
    assert rows["b"].accuracy.value == 1.0 and rows["b"].parse_failure_rate.value == 0.0

    by_modality = {(row.arm, row.value): row for row in accuracy_table(ARM_A + ARM_B, by="modality", bootstrap=0)}
    assert set(by_modality) == {("a", "CT"), ("a", "MR"), ("b", "unknown")}
    ct, mr = by_modality[("a", "CT")], by_modality[("a", "MR")]
    assert (ct.accuracy.value, ct.parsed_accuracy.value, ct.parse_failure_rate.value, ct.chance) == pytest.approx(
        (0.5, 2 / 3, 0.25, 0.25))
    assert (mr.accuracy.value, mr.parsed_accuracy.value, mr.parse_failure_rate.value, mr.chance) == pytest.approx(
        (0.5, 1.0, 0.5, 0.5))
    assert ct.accuracy.ci_low is None  # bootstrap=0: no intervals, point estimates only

    by_kind = {row.value: row for row in accuracy_table(ARM_A, by="kind", bootstrap=0)}
    assert by_kind["open"].accuracy.value == 0.5 and by_kind["open"].parsed_accuracy.value == 1.0
    assert by_kind["open"].chance is None and by_kind["yes_no"].chance == 0.5


def test_all_unparsed_leaves_parsed_accuracy_undefined() -> None:
    row = accuracy_table([outcome("a", "q1", "c1", None), outcome("a", "q2", "c1", None)], bootstrap=50)[0]
    assert row.accuracy.value == 0.0 and row.parse_failure_rate.value == 1.0
    assert row.parsed_accuracy.value is None and row.parsed_accuracy.reason == "no parsed replies"


def test_outcome_validation_and_located_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        VqaOutcome(arm="a", question_id="q", case_id="c", kind="choice", parsed=False, correct=False)
    with pytest.raises(ValidationError):
        VqaOutcome(arm="a", question_id="q", case_id="c", kind="choice", parsed=True, correct=None)
    with pytest.raises(ValidationError):
        outcome("a", "q", "c", True, chance=float("nan"))
    with pytest.raises(ValidationError):
        outcome("a", "q", "c", True, groups={f"g{i}": "x" for i in range(40)})
    secret = "Doe^Jane-chest"
    with pytest.raises(VqaOutcomeError) as raised:
        accuracy_table([outcome("a", secret, "c", True), outcome("a", "q2", "c", True),
                        outcome("a", secret, "c", False)], bootstrap=0)
    assert "row 2" in str(raised.value) and "row 0" in str(raised.value) and secret not in str(raised.value)
    monkeypatch.setattr(vqa_metrics, "MAX_OUTCOMES", 2)
    with pytest.raises(ResourceExhausted):
        accuracy_table([outcome("a", f"q{i}", "c", True) for i in range(3)], bootstrap=0)


def test_open_answer_means_by_hand() -> None:
    # EM 1, 0, unparsed (0) -> 1/3; F1 1.0, 0.5, 0 -> 0.5; recall 1.0, 1.0, 0 -> 2/3. The parsed but unscored
    # row is left out; the choice question is not an open question.
    rows = [
        outcome("a", "q1", "c1", True, kind="open", exact_match=1.0, token_f1=1.0, token_recall=1.0),
        outcome("a", "q2", "c2", False, kind="open", exact_match=0.0, token_f1=0.5, token_recall=1.0),
        outcome("a", "q3", "c3", None, kind="open"),
        outcome("a", "q4", "c4", False, kind="open"),
        outcome("a", "q5", "c5", True),
    ]
    row = open_answer_table(rows, bootstrap=200)[0]
    assert (row.n, row.n_cases) == (4, 4)
    assert row.exact_match.value == pytest.approx(1 / 3) and row.exact_match.n == 3
    assert row.token_f1.value == pytest.approx(0.5) and row.token_recall.value == pytest.approx(2 / 3)
    assert row.token_f1.ci_low is not None and row.token_f1.ci_low <= 0.5 <= (row.token_f1.ci_high or 0)


def test_probmed_pair_accuracy_by_hand() -> None:
    def pair(pair_id: str, first: bool | None, second: bool | None, repeat: int = 0) -> list[VqaOutcome]:
        return [outcome("a", f"{pair_id}-gt", pair_id, first, kind="yes_no", repeat=repeat, pair_id=pair_id,
                        pair_role="ground_truth"),
                outcome("a", f"{pair_id}-adv", pair_id, second, kind="yes_no", repeat=repeat, pair_id=pair_id,
                        pair_role="adversarial")]

    rows = [*pair("p1", True, True), *pair("p1", True, True, repeat=1), *pair("p2", True, False),
            *pair("p3", None, True), pair("p4", True, True)[0], outcome("a", "lone", "c9", True, kind="yes_no")]
    result = pair_accuracy(rows, bootstrap=200)
    assert len(result) == 1
    row = result[0]
    # complete pairs: p1 (repeats 0 and 1, both correct), p2 (one wrong), p3 (one unparsed) -> 2/4; p4 incomplete
    assert (row.n_sets, row.n_incomplete, row.n_cases) == (4, 1, 3)
    assert row.accuracy.value == pytest.approx(0.5) and row.chance == pytest.approx(0.25)
    assert not hasattr(row, "confusion_rate")


def test_mediconfusion_set_accuracy_and_confusion_by_hand() -> None:
    def image_pair(set_id: str, first: tuple[bool | None, str | None], second: tuple[bool | None, str | None]
                   ) -> list[VqaOutcome]:
        return [outcome("a", f"{set_id}-{n}", set_id, correct, chance=0.5, pair_id=set_id, pair_role=f"image_{n}",
                        answer=answer) for n, (correct, answer) in enumerate((first, second), start=1)]

    # Gold answers differ within a set (image 1: A, image 2: B).
    rows = [*image_pair("s1", (True, "A"), (True, "B")),      # set correct, different answers
            *image_pair("s2", (True, "A"), (False, " a")),    # same answer A for both: confused
            *image_pair("s3", (False, "B"), (False, "A")),    # both wrong, answers swapped: not confused
            *image_pair("s4", (True, "A"), (None, None)),     # one reply unparsed: not a valid set for confusion
            *image_pair("s5", (True, None), (False, None))]   # answers not stored: one right <=> same answer
    row = set_accuracy(rows, bootstrap=200)[0]
    assert (row.n_sets, row.n_incomplete) == (5, 0)
    assert row.accuracy.value == pytest.approx(1 / 5) and row.chance == pytest.approx(0.25)
    assert row.confusion_rate.value == pytest.approx(2 / 4) and row.confusion_rate.n == 4
    assert row.confusion_chance == pytest.approx(0.5)


def _paired(b: int, c: int, both_right: int = 5, both_wrong: int = 4) -> tuple[list[bool], list[bool]]:
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    other = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return a, other


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 0), (3, 3), (1, 9), (7, 2), (0, 25), (40, 60), (5000, 5300)])
def test_mcnemar_matches_scipy_binomtest(b: int, c: int) -> None:
    result = mcnemar_exact(*_paired(b, c))
    assert (result.b, result.c, result.n) == (b, c, b + c + 9)
    assert result.p_value == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_mcnemar_without_discordant_pairs_and_unparsed_as_wrong() -> None:
    result = mcnemar_exact(*_paired(0, 0))
    assert (result.b, result.c, result.p_value) == (0, 0, 1.0)
    with pytest.raises(ValueError):  # scipy has no test for n = 0; medagent reports p = 1
        binomtest(0, 0, 0.5)
    unparsed = mcnemar_exact([None, True, None], [True, None, None])
    assert (unparsed.b, unparsed.c) == (1, 1)
    with pytest.raises(VqaOutcomeError):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_difference_resamples_both_arms_jointly() -> None:
    rng = np.random.default_rng(0)
    a = list(rng.random(80) < 0.5)
    cases = [f"c{i // 2}" for i in range(80)]
    same = paired_bootstrap_difference(a, a, cases, bootstrap=300, seed=2)
    # the same case draws for both arms: an arm compared with itself differs by exactly 0 in every resample
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    b = [x or i % 4 == 0 for i, x in enumerate(a)]
    diff = paired_bootstrap_difference(a, b, cases, bootstrap=300, seed=2)
    assert diff.value == pytest.approx(np.mean(b) - np.mean(a))
    assert diff.value is not None and diff.ci_low is not None and diff.ci_high is not None
    assert diff.ci_low <= diff.value <= diff.ci_high
    assert diff == paired_bootstrap_difference(a, b, cases, bootstrap=300, seed=2)


def test_compare_arms_by_hand() -> None:
    base = [True, True, False, False, True, None]
    experts = [True, False, True, True, True, True]
    rows = [outcome("base", f"q{i}", f"c{i // 2}", x) for i, x in enumerate(base)]
    rows += [outcome("experts", f"q{i}", f"c{i // 2}", x) for i, x in enumerate(experts)]
    rows += [outcome("experts", "q-extra", "c9", True), outcome("blur", "q0", "c0", False)]
    table = {row.arm: row for row in compare_arms(rows, "base", bootstrap=300)}
    assert set(table) == {"blur", "experts"}
    row = table["experts"]
    # base 3/6, experts 5/6; base only: q1 (b = 1); experts only: q2, q3, q5 (unparsed in base; c = 3)
    assert (row.n_paired, row.n_cases, row.n_unpaired) == (6, 3, 1)
    assert row.baseline_accuracy.value == pytest.approx(0.5) and row.arm_accuracy.value == pytest.approx(5 / 6)
    assert row.difference.value == pytest.approx(1 / 3)
    assert (row.mcnemar.b, row.mcnemar.c) == (1, 3)
    assert row.mcnemar.p_value == pytest.approx(binomtest(1, 4, 0.5).pvalue)
    assert (table["blur"].n_paired, table["blur"].n_unpaired) == (1, 5)
    with pytest.raises(VqaOutcomeError):
        compare_arms(rows, "no-such-arm", bootstrap=0)


def _width(rows: list[VqaOutcome], seed: int = 0) -> float:
    value = accuracy_table(rows, bootstrap=1000, seed=seed)[0].accuracy
    assert value.ci_low is not None and value.ci_high is not None and value.value is not None
    assert value.ci_low <= value.value <= value.ci_high
    return value.ci_high - value.ci_low


def test_bootstrap_interval_shrinks_with_cases_and_is_seeded() -> None:
    small = [outcome("a", f"q{i}", f"c{i}", i % 2 == 0) for i in range(20)]
    large = [outcome("a", f"q{i}", f"c{i}", i % 2 == 0) for i in range(500)]
    assert _width(large) < _width(small) / 3
    # cases of 1 to 5 questions: resampled accuracies take many values, so another seed moves the interval
    uneven = [outcome("a", f"q{i}-{j}", f"c{i}", (i * 7 + j) % 3 == 0) for i in range(30) for j in range(i % 5 + 1)]
    assert accuracy_table(uneven, bootstrap=500, seed=7) == accuracy_table(uneven, bootstrap=500, seed=7)
    assert accuracy_table(uneven, bootstrap=500, seed=7) != accuracy_table(uneven, bootstrap=500, seed=8)


def test_bootstrap_resamples_cases_not_questions() -> None:
    # ten cases of ten questions each; a case's questions are all right or all wrong: the evidence is ten cases
    by_case = [outcome("a", f"q{i}", f"c{i // 10}", (i // 10) % 2 == 0) for i in range(100)]
    by_question = [row.model_copy(update={"case_id": row.question_id}) for row in by_case]
    assert _width(by_case) > 2 * _width(by_question)


def test_severity_curve_and_png(tmp_path: Path) -> None:
    accuracies = {"clean": 9, "noise-1": 7, "noise-2": 4, "blur-1": 6}  # correct out of 10
    rows = [outcome(arm, f"q{i}", f"c{i}", i < right) for arm, right in accuracies.items() for i in range(10)]
    arms = {"noise-1": ("noise", 1.0), "noise-2": ("noise", 2.0), "blur-1": ("blur", 1.0), "ghost": ("blur", 3.0)}
    curves = {curve.corruption: curve for curve in severity_curve(rows, arms, clean_arm="clean", bootstrap=200)}
    assert [(p.arm, p.severity, p.accuracy.value) for p in curves["noise"].points] == [
        ("clean", 0.0, 0.9), ("noise-1", 1.0, 0.7), ("noise-2", 2.0, 0.4)]
    assert [(p.arm, p.accuracy.value) for p in curves["blur"].points] == [("clean", 0.9), ("blur-1", 0.6),
                                                                          ("ghost", None)]
    assert curves["noise"].chance == pytest.approx(0.25)
    with pytest.raises(VqaOutcomeError):
        severity_curve(rows, {"noise-1": ("noise", 1.0), "noise-2": ("noise", 1.0)}, bootstrap=0)

    path = plot_severity(list(curves.values()), tmp_path / "plots" / "severity.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with Image.open(path) as image:
        assert image.size == (600, 420) and len(image.getcolors(1 << 16) or []) > 10  # lines, not a blank canvas
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
