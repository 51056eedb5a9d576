"""Paired statistics of a VQA study: question pairs and sets scored together, and arms compared on the same questions.

ProbMed pairs and MediConfusion sets share a ``pair_id`` within an arm and repeat; a set with a single question (its
partner was skipped or failed) is counted as incomplete and left out. The resampling unit of a set is its first
case id, so a set moves as one in the bootstrap.

Arms are compared on the questions both answered (same ``question_id`` and ``repeat``); an unparsed reply counts as
wrong on both sides. McNemar's exact test is the two-sided binomial test of the smaller discordant count on all
discordant pairs at p = 1/2; the accuracy difference gets a paired case bootstrap: the same case draws for both arms.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, Field

from medagent.errors import ResourceExhausted
from medagent.reports.metrics import MetricValue
from medagent.reports.vqa_metrics import (
    MAX_OUTCOMES,
    MAX_SET_MEMBERS,
    CaseTotals,
    VqaOutcome,
    VqaOutcomeError,
    bootstrap_config,
    checked,
    mean_of_known,
)


class PairRow(BaseModel):
    arm: str
    n_sets: int
    n_cases: int
    n_incomplete: int = Field(description=f"pair ids with one (or over {MAX_SET_MEMBERS}) questions in a repeat")
    accuracy: MetricValue = Field(description="share of sets with every question correct")
    chance: float | None = Field(description="mean over sets of the product of their questions' chance levels")


class SetRow(PairRow):
    confusion_rate: MetricValue = Field(description="share of fully answered sets given the same answer throughout")
    confusion_chance: float | None = Field(description="chance that uniform guesses agree: 0.5 for two options")


class McNemarResult(BaseModel):
    n: int = Field(description="paired observations")
    b: int = Field(description="correct in the first arm only")
    c: int = Field(description="correct in the second arm only")
    p_value: float


class ArmComparison(BaseModel):
    arm: str
    baseline: str
    n_paired: int
    n_cases: int
    n_unpaired: int = Field(description="rows of either arm whose question and repeat the other arm lacks")
    baseline_accuracy: MetricValue
    arm_accuracy: MetricValue
    difference: MetricValue = Field(description="arm accuracy - baseline accuracy, paired case bootstrap interval")
    mcnemar: McNemarResult = Field(description="b: baseline correct only, c: arm correct only")


def _sets(rows: list[VqaOutcome]) -> tuple[dict[str, list[list[VqaOutcome]]], dict[str, int]]:
    """Complete sets per arm (members ordered by role, then question id) and the count of incomplete ones."""
    members: dict[tuple[str, int, str], list[VqaOutcome]] = defaultdict(list)
    for row in rows:
        if row.pair_id is not None:
            members[(row.arm, row.repeat, row.pair_id)].append(row)
    complete: dict[str, list[list[VqaOutcome]]] = defaultdict(list)
    incomplete: dict[str, int] = defaultdict(int)
    for (arm, _, _), rows_of_set in sorted(members.items()):
        if 2 <= len(rows_of_set) <= MAX_SET_MEMBERS:
            complete[arm].append(sorted(rows_of_set, key=lambda row: (row.pair_role or "", row.question_id)))
        else:
            incomplete[arm] += 1
    return complete, incomplete


def _product(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.prod(known)) if len(known) == len(values) else None


def _confused(members: list[VqaOutcome]) -> bool | None:
    """Same answer for every image. Without stored answers it follows from correctness for MediConfusion's shape
    (two two-option questions whose gold answers differ: same answer <=> exactly one correct); else unknown."""
    if not all(row.parsed for row in members):
        return None  # MediConfusion counts confusion over the sets with every answer valid
    answers = [row.answer for row in members]
    if all(answer is not None for answer in answers):
        return len({(answer or "").strip().casefold() for answer in answers}) == 1
    if len(members) == 2 and all(row.kind == "choice" and row.chance == 0.5 for row in members):
        return members[0].correct != members[1].correct
    return None


def set_accuracy(outcomes: Iterable[VqaOutcome], *, bootstrap: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> list[SetRow]:
    """MediConfusion's scores per arm: set accuracy (every image of the set answered correctly, over all sets) and
    confusion (the same valid answer for both images, over the sets whose answers are all valid). Chance with two
    options: 0.25 and 0.5."""
    config = bootstrap_config(bootstrap, confidence, seed)
    complete, incomplete = _sets(checked(outcomes))
    table: list[SetRow] = []
    for arm in sorted(set(complete) | set(incomplete)):
        sets = complete.get(arm, [])
        confused = [_confused(members) for members in sets]
        columns = np.array([[all(row.correct for row in members), 1.0, flag is True, flag is not None]
                            for members, flag in zip(sets, confused, strict=True)], dtype=float).reshape(-1, 4)
        totals = CaseTotals([members[0].case_id for members in sets], columns, config.derived(f"sets|{arm}"))
        chances = [[row.chance for row in members] for members in sets]
        table.append(SetRow(
            arm=arm, n_sets=len(sets), n_cases=totals.n_cases, n_incomplete=incomplete.get(arm, 0),
            accuracy=totals.ratio(0, 1), chance=mean_of_known(_product(c) for c in chances),
            confusion_rate=totals.ratio(2, 3, "no set with every answer valid"),
            confusion_chance=mean_of_known(_product(c[1:]) for c in chances)))
    return table


def pair_accuracy(outcomes: Iterable[VqaOutcome], *, bootstrap: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> list[PairRow]:
    """ProbMed's pair accuracy per arm: a pair counts only if both its questions are correct; chance 0.25 for two
    yes/no questions."""
    fields = set(PairRow.model_fields)
    return [PairRow(**row.model_dump(include=fields))
            for row in set_accuracy(outcomes, bootstrap=bootstrap, confidence=confidence, seed=seed)]


def _correctness(values: Sequence[bool | None] | np.ndarray) -> np.ndarray:
    if len(values) > MAX_OUTCOMES:
        raise ResourceExhausted(f"more than {MAX_OUTCOMES} paired outcomes", limit=MAX_OUTCOMES)
    return np.array([bool(value) if value is not None else False for value in values], dtype=bool)


def mcnemar_exact(a_correct: Sequence[bool | None] | np.ndarray,
                  b_correct: Sequence[bool | None] | np.ndarray) -> McNemarResult:
    """McNemar's exact test on paired outcomes (None counts as wrong); p = 1 when no pair is discordant."""
    from scipy.stats import binom

    a, b = _correctness(a_correct), _correctness(b_correct)
    if a.shape != b.shape:
        raise VqaOutcomeError("paired outcomes need the same length on both sides")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p_value = min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), discordant, 0.5))) if discordant else 1.0
    return McNemarResult(n=int(a.size), b=only_a, c=only_b, p_value=p_value)


def paired_bootstrap_difference(a_correct: Sequence[bool | None] | np.ndarray,
                                b_correct: Sequence[bool | None] | np.ndarray, case_ids: Sequence[str], *,
                                bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> MetricValue:
    """accuracy(b) - accuracy(a) on paired outcomes, with a case bootstrap drawing the same cases for both."""
    a, b = _correctness(a_correct), _correctness(b_correct)
    if not a.size == b.size == len(case_ids):
        raise VqaOutcomeError("paired outcomes and case ids need the same length")
    totals = CaseTotals(list(case_ids), np.column_stack([a, b, np.ones(a.size)]),
                        bootstrap_config(bootstrap, confidence, seed))
    return totals.difference(1, 0, 2)


def compare_arms(outcomes: Iterable[VqaOutcome], baseline: str, *, bootstrap: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> list[ArmComparison]:
    """One row per arm other than ``baseline``: both accuracies on their shared questions, the difference with a
    paired bootstrap interval, and McNemar's exact test."""
    by_arm: dict[str, dict[tuple[str, int], VqaOutcome]] = defaultdict(dict)
    for row in checked(outcomes):
        by_arm[row.arm][(row.question_id, row.repeat)] = row
    if baseline not in by_arm:
        raise VqaOutcomeError("the baseline arm has no outcomes")
    config = bootstrap_config(bootstrap, confidence, seed)
    reference = by_arm[baseline]
    table: list[ArmComparison] = []
    for arm in sorted(set(by_arm) - {baseline}):
        keys = sorted(reference.keys() & by_arm[arm].keys())
        a = np.array([reference[key].correct is True for key in keys], dtype=bool)
        b = np.array([by_arm[arm][key].correct is True for key in keys], dtype=bool)
        totals = CaseTotals([reference[key].case_id for key in keys], np.column_stack([a, b, np.ones(a.size)]),
                            config.derived(f"compare|{baseline}|{arm}"))
        table.append(ArmComparison(
            arm=arm, baseline=baseline, n_paired=len(keys), n_cases=totals.n_cases,
            n_unpaired=len(reference) + len(by_arm[arm]) - 2 * len(keys),
            baseline_accuracy=totals.ratio(0, 2), arm_accuracy=totals.ratio(1, 2),
            difference=totals.difference(1, 0, 2), mcnemar=mcnemar_exact(a, b)))
    return table
