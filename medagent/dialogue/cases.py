"""The one case model every dialogue benchmark speaks, whatever file it came from.

A case splits what each simulated role may know: the patient sees :class:`PatientFacts` only, the
measurement agent :class:`ExaminerFacts` only, and nobody but the assessor and the metrics sees the
diagnosis. Images are file paths here; a dialogue attaches them as artifacts when it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Temperament = Literal["sanguine", "choleric", "melancholic", "phlegmatic"]
TEMPERAMENTS: tuple[Temperament, ...] = get_args(Temperament)
# Case file layouts, defined once: a case's source, and the format a loader is asked for ("auto" detects it)
CaseSource = Literal["agentclinic", "3mdbench", "medagent"]
CaseFormat = Literal["auto", CaseSource]
CASE_SOURCES: tuple[CaseSource, ...] = get_args(CaseSource)
CASE_FORMATS: tuple[CaseFormat, ...] = ("auto", *CASE_SOURCES)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PatientFacts(_Frozen):
    """What the patient knows and may say (AgentClinic's ``Patient_Actor``)."""

    demographics: str = ""
    history: str = ""
    primary_symptom: str = Field(min_length=1, description="the main complaint the patient opens with")
    secondary_symptoms: list[str] = Field(default_factory=list)
    past_medical_history: str = ""
    social_history: str = ""
    review_of_systems: str = ""
    opening: str | None = Field(default=None, description="a written first line (3MDBench general_complaint)")


class ExaminerFacts(_Frozen):
    """What only examination and tests reveal: free nested data, as the case files hold it."""

    physical_examination: dict[str, Any] = Field(default_factory=dict)
    test_results: dict[str, Any] = Field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.physical_examination and not self.test_results


class DialogueCase(_Frozen):
    case_id: str = Field(min_length=1, description="stable across loads, so a resumed study finds the case")
    source: CaseSource = "medagent"
    objective: str = Field(default="", description="the task as told to the doctor (AgentClinic's objective)")
    patient: PatientFacts
    examiner: ExaminerFacts = Field(default_factory=ExaminerFacts)
    images: list[Path] = Field(default_factory=list, description="absolute paths; attached when the dialogue starts")
    diagnosis: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list, description="other names that count as the diagnosis")
    label_set: str | None = Field(default=None, description="the label set the diagnosis belongs to, by name")
    temperament: Temperament | None = None
    biases: list[str] = Field(default_factory=list, description="patient bias names (see medagent.simulators.personas)")
    subgroups: dict[str, str] = Field(default_factory=dict, description="e.g. age_band, sex, skin_type")

    def diagnosis_names(self) -> list[str]:
        """The diagnosis and its synonyms: the strings the patient must never say."""
        return [self.diagnosis, *self.synonyms]
