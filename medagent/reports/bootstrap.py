"""Case-level percentile bootstrap, shared by every metric of a report.

Method: the unit of resampling is the *case* (``case_id``), not the row. Each of the
``n_resamples`` resamples draws as many cases as there are, uniformly with replacement,
from a seeded :func:`numpy.random.default_rng`; every row of a drawn case (all its
repeats) enters the resample with the case's multiplicity as its weight, so repeats of
one case never pose as independent evidence. A metric is recomputed on each resample;
resamples where it is undefined (no positives, one class only) are dropped, and the
interval is the (alpha/2, 1 - alpha/2) percentiles of the rest. All metrics of one
report reuse the same draws, which makes macro averages jointly resampled too.
"""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, Field

from medagent.errors import ResourceExhausted

# The multiplicity matrix holds n_resamples x cases int32 (the draws briefly as int64): 50M cells peaks near 1.5 GB.
MAX_RESAMPLES = 100_000
MAX_RESAMPLE_CELLS = 50_000_000

class BootstrapConfig(BaseModel):
    n_resamples: int = Field(default=1000, ge=0, description="0 disables the intervals; at most 100000, and "
                             "resamples x cases at most 50M (checked by CaseResampler)")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    seed: int = 0

    def derived(self, label: str) -> BootstrapConfig:
        """The same settings with a seed derived from ``label`` (stable across processes, unlike hash())."""
        mixed = np.random.SeedSequence([self.seed, zlib.crc32(label.encode())]).generate_state(1)[0]
        return self.model_copy(update={"seed": int(mixed)})


class CaseResampler:
    """Draws the case multiplicities once; maps them onto rows on request."""

    def __init__(self, case_ids: np.ndarray, config: BootstrapConfig) -> None:
        self.config = config
        self.cases, self._row_case = np.unique(np.asarray(case_ids).astype(str), return_inverse=True)
        n_cases, n_draws = len(self.cases), config.n_resamples
        rng = np.random.default_rng(config.seed)
        if n_cases == 0 or n_draws == 0:
            self._multiplicity = np.zeros((n_draws, n_cases), dtype=np.int32)
            return
        if n_draws > MAX_RESAMPLES or n_draws * n_cases > MAX_RESAMPLE_CELLS:
            raise ResourceExhausted(f"{n_draws} bootstrap resamples of {n_cases} cases exceed the cap of "
                                    f"{MAX_RESAMPLES} resamples and {MAX_RESAMPLE_CELLS} resample cells; "
                                    "lower metrics.bootstrap", limit=MAX_RESAMPLE_CELLS)
        try:
            draws = rng.integers(0, n_cases, size=(n_draws, n_cases))
            flat = (draws + np.arange(n_draws)[:, None] * n_cases).ravel()
            counts = np.bincount(flat, minlength=n_draws * n_cases)
            self._multiplicity = counts.reshape(n_draws, n_cases).astype(np.int32)
        except MemoryError:
            raise ResourceExhausted(f"not enough memory for {n_draws} bootstrap resamples of {n_cases} cases; "
                                    "lower metrics.bootstrap") from None

    @property
    def n_resamples(self) -> int:
        return self.config.n_resamples

    def row_weights(self, row_mask: np.ndarray) -> np.ndarray:
        """(n_resamples, rows selected by ``row_mask``) weights: each row weighs its case's multiplicity."""
        return self._multiplicity[:, self._row_case[row_mask]].astype(float)

    def count_cases(self, row_mask: np.ndarray) -> int:
        """How many distinct cases the rows selected by ``row_mask`` belong to."""
        return int(np.unique(self._row_case[row_mask]).size)

    def interval(self, samples: np.ndarray) -> tuple[float | None, float | None]:
        """Percentile interval of the defined samples; (None, None) when none is defined."""
        defined = samples[np.isfinite(samples)]
        if defined.size == 0:
            return None, None
        alpha = 1.0 - self.config.confidence
        low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        return float(low), float(high)


def ratio(numerator: ArrayLike, denominator: ArrayLike) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0 (the metric is undefined)."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def weighted_auroc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties count 1/2) for each row of ``weights`` (shape (B, n)); NaN if one class is absent.

    Equals ``sklearn.metrics.roc_auc_score(truth, score, sample_weight=w)`` for each weight row,
    computed for all rows at once: scores are grouped by unique value and per-group positive and
    negative weights summed with one ``bincount``.
    """
    weights = np.atleast_2d(weights)
    unique_scores, group = np.unique(score, return_inverse=True)
    n_groups, n_rows = len(unique_scores), weights.shape[0]
    flat = (group[None, :] + np.arange(n_rows)[:, None] * n_groups).ravel()
    positive = truth.astype(float)
    pos = np.bincount(flat, weights=(weights * positive).ravel(), minlength=n_rows * n_groups).reshape(n_rows, -1)
    neg = np.bincount(flat, weights=(weights * (1 - positive)).ravel(), minlength=n_rows * n_groups).reshape(n_rows, -1)
    negatives_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (negatives_below + 0.5 * neg)).sum(axis=1)
    return ratio(wins, pos.sum(axis=1) * neg.sum(axis=1))
