"""A weightless function tool: the CURB-65 severity score of community-acquired pneumonia.

Lim WS et al. Defining community acquired pneumonia severity on presentation to hospital: an international
derivation and validation study. Thorax 2003;58:377-382. Risk groups as in the BTS guideline (2009)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.experts import ExpertResult, ModelCard, Provenance
from medagent.tools import tool

RiskGroup = Literal["low", "intermediate", "high"]
_ADVICE: dict[RiskGroup, str] = {
    "low": "low risk: likely suitable for treatment at home",
    "intermediate": "intermediate risk: consider a short inpatient stay or hospital-supervised outpatient care",
    "high": "high risk: manage in hospital as severe pneumonia; assess for intensive care, especially at 4-5",
}


class Curb65Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confusion: bool = Field(description="new mental confusion (abbreviated mental test score 8 or less)")
    urea_mmol_per_l: float = Field(ge=0, le=150, description="blood urea in mmol/L")
    respiratory_rate_per_min: int = Field(ge=0, le=120, description="breaths per minute")
    systolic_bp_mmhg: int = Field(ge=0, le=350, description="systolic blood pressure in mmHg")
    diastolic_bp_mmhg: int = Field(ge=0, le=250, description="diastolic blood pressure in mmHg")
    age_years: int = Field(ge=0, le=130, description="age in years")


class Curb65Score(ExpertResult):
    score: int = Field(ge=0, le=5)
    criteria_met: list[str] = Field(description="the criteria that scored a point")
    risk_group: RiskGroup
    advice: str

    def summary_text(self) -> str:
        met = ", ".join(self.criteria_met) or "none"
        return f"CURB-65 {self.score}/5 (criteria met: {met}); {self.advice}."


CARD = ModelCard(
    summary="Computes the CURB-65 severity score of community-acquired pneumonia from five bedside findings "
            "(confusion, urea, respiratory rate, blood pressure, age) and its risk group. Needs no image.",
    performance="Lim et al. 2003 (Thorax 58:377): 30-day mortality rises with the score; "
                "validated in UK, New Zealand and Dutch cohorts.",
    limitations=["adults with community-acquired pneumonia only", "a triage aid: clinical judgement decides",
                 "urea in mmol/L (BUN in mg/dL divided by 2.8)"],
    references=["https://doi.org/10.1136/thorax.58.5.377"],
)
PROVENANCE = Provenance(expert="curb65", model_id="curb65/lim-2003", device="cpu")


def score(findings: Curb65Input) -> Curb65Score:
    """The score itself: one point per criterion (pure, for use outside medagent too)."""
    criteria = {
        "confusion": findings.confusion,
        "urea > 7 mmol/L": findings.urea_mmol_per_l > 7,
        "respiratory rate >= 30/min": findings.respiratory_rate_per_min >= 30,
        "systolic < 90 or diastolic <= 60 mmHg": findings.systolic_bp_mmhg < 90 or findings.diastolic_bp_mmhg <= 60,
        "age >= 65": findings.age_years >= 65,
    }
    met = [name for name, hit in criteria.items() if hit]
    group: RiskGroup = "low" if len(met) <= 1 else "intermediate" if len(met) == 2 else "high"
    return Curb65Score(provenance=PROVENANCE, score=len(met), criteria_met=met, risk_group=group,
                       advice=_ADVICE[group])


@tool(card=CARD)
async def curb65_score(arguments: Curb65Input) -> Curb65Score:
    """CURB-65 pneumonia severity score."""
    return score(arguments)
