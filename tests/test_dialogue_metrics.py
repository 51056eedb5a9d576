"""Dialogue metrics on hand-computed examples, against scikit-learn, and with case-level bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from medagent.dialogue.labels import Label, LabelSet
from medagent.reports.bootstrap import BootstrapConfig, CaseResampler
from medagent.reports.dialogue_metrics import (
    DialogueRow,
    accuracy,
    dialogue_summary,
    none_rate,
    normalised_pairs,
    rubric_means,
    weighted_f1,
)

SKIN = LabelSet(name="skin", labels=[
    Label(name="hives", synonyms=["urticaria"]), Label(name="eczema", synonyms=["atopic dermatitis"]),
    Label(name="psoriasis"), Label(name="acne"),
])
TRUTHS = ["hives", "Hives", "hives", "eczema", "eczema", "psoriasis", "psoriasis", "psoriasis", "psoriasis"]
PREDICTIONS = ["Urticaria", "none", "eczema", "atopic dermatitis", "Eczema.", "psoriasis", None, "acne",
               "I am not sure"]
# Normalised: hives->hives, hives->none, hives->eczema, eczema->eczema, eczema->eczema, psoriasis->psoriasis,
# psoriasis->None, psoriasis->acne, psoriasis->None (names no label).
# Per true class, F1 = 2TP / (support + times predicted):
#   hives     support 3, TP 1, predicted 1 (row 1)        -> 2/(3+1) = 0.5
#   eczema    support 2, TP 2, predicted 3 (rows 3, 4, 5)  -> 4/(2+3) = 0.8
#   psoriasis support 4, TP 1, predicted 1 (row 6)        -> 2/(4+1) = 0.4
# weighted F1 = (3*0.5 + 2*0.8 + 4*0.4) / 9 = 4.7 / 9; accuracy = 4/9 (rows 1, 4, 5, 6);
# none rate = 3/9 (rows 2, 7, 9). Without synonyms row 1 and row 4 would be wrong.
EXPECTED_F1 = 4.7 / 9


def test_hand_computed_metrics_with_synonyms() -> None:
    pairs = normalised_pairs(TRUTHS, PREDICTIONS, SKIN)
    assert pairs[0] == ("hives", "hives") and pairs[1] == ("hives", "none") and pairs[8] == ("psoriasis", None)
    assert weighted_f1(pairs) == pytest.approx(EXPECTED_F1)
    assert accuracy(pairs) == pytest.approx(4 / 9)
    assert none_rate(pairs) == pytest.approx(3 / 9)
    literal = [(truth.lower(), prediction) for truth, prediction in zip(TRUTHS, PREDICTIONS, strict=True)]
    assert accuracy(literal) == pytest.approx(1 / 9)  # compared literally, only row 6 ('psoriasis') matches
    assert weighted_f1([]) is None and accuracy([]) is None


def test_weighted_f1_matches_scikit_learn_on_random_answers() -> None:
    rng = np.random.default_rng(11)
    classes = ["a", "b", "c", "d", "e"]
    truths = [str(x) for x in rng.choice(classes, size=200, p=[0.4, 0.3, 0.15, 0.1, 0.05])]
    answers = np.array([*classes, "f", "none", None], dtype=object)  # 'f' is no case's truth
    predictions = [t if rng.random() < 0.45 else rng.choice(answers) for t in truths]
    pairs = [(t, p) for t, p in zip(truths, predictions, strict=True)]
    y_pred = ["<no answer>" if p is None else p for p in predictions]
    expected = f1_score(truths, y_pred, labels=sorted(set(truths)), average="weighted", zero_division=0)
    assert weighted_f1(pairs) == pytest.approx(expected)
    assert accuracy(pairs) == pytest.approx(accuracy_score(truths, y_pred))
    assert none_rate(pairs) == pytest.approx(np.mean([p in (None, "none") for p in predictions]))


def test_rubric_means_over_scored_dialogues() -> None:
    # history: (1 + 0 + 1) / 3; empathy scored twice: (0 + 1) / 2
    means = rubric_means([{"history": 1, "empathy": 0}, {"history": 0}, {"history": 1, "empathy": 1}])
    assert means == {"empathy": pytest.approx(0.5), "history": pytest.approx(2 / 3)}


def _rows() -> list[DialogueRow]:
    temperaments = ["choleric", "sanguine", "choleric", "melancholic", "sanguine", "choleric", "sanguine",
                    "melancholic", "choleric"]
    return [DialogueRow(case_id=f"case-{i}", truth=t, prediction=p, groups={"temperament": g},
                        rubric={"history": i % 2, "empathy": int(i < 3)}, overall="satisfactory" if i % 3 else "excellent")
            for i, (t, p, g) in enumerate(zip(TRUTHS, PREDICTIONS, temperaments, strict=True))]


def test_summary_overall_and_per_group_values() -> None:
    summary = dialogue_summary(_rows(), SKIN, group_by=["temperament", "bias"], bootstrap=0)
    overall = summary.overall
    assert overall.weighted_f1.value == pytest.approx(EXPECTED_F1) and overall.weighted_f1.ci_low is None
    assert overall.accuracy.value == pytest.approx(4 / 9) and overall.none_rate.value == pytest.approx(1 / 3)
    assert overall.rubric["history"].value == pytest.approx(4 / 9)  # i odd: 1, 3, 5, 7
    assert overall.rubric["empathy"].value == pytest.approx(3 / 9)
    assert overall.overall_competence["excellent"].value == pytest.approx(3 / 9)  # i = 0, 3, 6
    assert overall.overall_competence["unsatisfactory"].value == 0.0
    temperament, bias = summary.groups
    assert [row.value for row in temperament.rows] == ["choleric", "melancholic", "sanguine"]
    choleric = temperament.rows[0].metrics  # rows 0, 2, 5, 8: hives ok, hives->eczema, psoriasis ok, ->None
    assert choleric.n_cases == 4 and temperament.rows[0].small
    assert choleric.accuracy.value == pytest.approx(2 / 4) and choleric.none_rate.value == pytest.approx(1 / 4)
    # hives: support 2, TP 1, predicted 1 -> 2/3; psoriasis: support 2, TP 1, predicted 1 -> 2/3
    assert choleric.weighted_f1.value == pytest.approx(2 / 3)
    assert [row.value for row in bias.rows] == ["unknown"] and bias.rows[0].metrics.n_observations == 9


def test_summary_intervals_resample_cases_like_the_other_reports() -> None:
    rows = _rows() + [row.model_copy(update={"prediction": "psoriasis"}) for row in _rows()[5:]]  # repeats
    summary = dialogue_summary(rows, SKIN, bootstrap=200, confidence=0.9, seed=5)
    assert summary.overall.n_cases == 9 and summary.overall.n_observations == 13
    config = BootstrapConfig(n_resamples=200, confidence=0.9, seed=5)
    resampler = CaseResampler(np.array([row.case_id for row in rows]), config)
    weights = resampler.row_weights(np.ones(len(rows), dtype=bool))
    pairs = normalised_pairs([r.truth for r in rows], [r.prediction for r in rows], SKIN)
    truths = [t for t, _ in pairs]
    predicted = ["<no answer>" if p is None else p for _, p in pairs]
    samples = [f1_score(truths, predicted, labels=sorted(set(truths)), average="weighted", sample_weight=w,
                        zero_division=0) for w in weights]
    low, high = np.percentile(samples, [5, 95])
    assert summary.overall.weighted_f1.ci_low == pytest.approx(low)
    assert summary.overall.weighted_f1.ci_high == pytest.approx(high)
    value = summary.overall.weighted_f1
    assert value.value is not None and value.ci_low is not None and value.ci_high is not None
    assert value.ci_low <= value.value <= value.ci_high


def test_flat_rows_and_an_empty_group() -> None:
    flat = [{"case_id": "x", "truth": "acne", "prediction": "acne", "temperament": "phlegmatic", "bias": None,
             "rubric.history": 1, "overall": None},
            {"case_id": "y", "truth": "acne", "prediction": None, "temperament": "phlegmatic", "rubric.history": 0}]
    summary = dialogue_summary(flat, SKIN, group_by=["temperament"], bootstrap=50)
    assert summary.overall.accuracy.value == 0.5 and summary.overall.rubric["history"].value == 0.5
    assert summary.overall.overall_competence == {}
    assert summary.groups[0].rows[0].value == "phlegmatic"
    empty = dialogue_summary([], SKIN, group_by=["temperament"], bootstrap=10)
    assert empty.overall.accuracy.value is None and empty.groups[0].rows == []
