"""What produced a run, as a report opens with it: medagent version, git SHA, config hash, planner models,
expert weight hashes, and whether any expert ran on untrained (test-only) weights.

Built from the cases frame's provenance columns (:mod:`medagent.store.frames`), so a report needs no
database. Values come from the store's own rows (versions, hashes, model ids), never from case data.
"""

from __future__ import annotations

import json

import pandas as pd
from pydantic import BaseModel, Field

from medagent.runtime.untrained import NOTICE, UNTRAINED_WEIGHTS

_MAX_VALUES = 20  # a header, not a table: a run with more distinct values says how many were left out


class ReportProvenance(BaseModel):
    medagent_versions: list[str] = Field(default_factory=list)
    git_shas: list[str] = Field(default_factory=list)
    config_hashes: list[str] = Field(default_factory=list)
    planner_models: list[str] = Field(default_factory=list)
    expert_weights: dict[str, list[str]] = Field(default_factory=dict,
                                                 description="expert -> weight sha256s ('untrained', 'none')")
    untrained_experts: list[str] = Field(default_factory=list)
    untrained_cases: int = 0

    @property
    def untrained(self) -> bool:
        return bool(self.untrained_experts or self.untrained_cases)

    def banner(self) -> str | None:
        """The warning a report opens with when any result came from untrained weights."""
        if not self.untrained:
            return None
        experts = ", ".join(self.untrained_experts) or "an expert"
        return f"{NOTICE}. Untrained: {experts} ({self.untrained_cases} case runs)."

    def lines(self) -> list[str]:
        """``label: value`` lines of the header (every label present, '-' when unknown)."""
        weights = "; ".join(f"{expert}: {', '.join(values)}" for expert, values in self.expert_weights.items())
        return [f"medagent version: {_join(self.medagent_versions)}", f"git SHA: {_join(self.git_shas)}",
                f"config hash: {_join(self.config_hashes)}", f"planner models: {_join(self.planner_models)}",
                f"expert weights (sha256): {weights or '-'}"]


def _join(values: list[str]) -> str:
    return ", ".join(values) if values else "-"


def _distinct(cases: pd.DataFrame, column: str) -> list[str]:
    if column not in cases.columns:
        return []
    values = sorted({str(v) for v in cases[column].dropna().tolist() if str(v)})
    return values[:_MAX_VALUES] + ([f"... {len(values) - _MAX_VALUES} more"] if len(values) > _MAX_VALUES else [])


def report_provenance(cases: pd.DataFrame) -> ReportProvenance:
    """The provenance of the runs in ``cases`` (one run in a report)."""
    weights: dict[str, set[str]] = {}
    untrained: list[str] = []
    for text in (cases["expert_weights"].dropna().tolist() if "expert_weights" in cases.columns else []):
        try:
            mapping = json.loads(text) if isinstance(text, str) else dict(text)
        except (ValueError, TypeError):
            continue
        for expert, value in mapping.items():
            weights.setdefault(str(expert), set()).add("none" if value is None else str(value))
            if value == UNTRAINED_WEIGHTS and str(expert) not in untrained:
                untrained.append(str(expert))
    flags = cases["untrained"] if "untrained" in cases.columns else pd.Series(dtype=bool)
    return ReportProvenance(
        medagent_versions=_distinct(cases, "medagent_version"), git_shas=_distinct(cases, "git_sha"),
        config_hashes=_distinct(cases, "config_hash"), planner_models=_distinct(cases, "model_id"),
        expert_weights={expert: sorted(values)[:_MAX_VALUES] for expert, values in sorted(weights.items())},
        untrained_experts=sorted(untrained), untrained_cases=int(flags.fillna(False).astype(bool).sum()),
    )
