"""The ``dialogue`` graph of a study: simulated consultations between the doctor (the planner with its
experts) and a simulated patient, scored by an assessor (3MDBench- and AgentClinic-style benchmarks).

Variants multiply the work: ``temperaments: each`` runs every case once per temperament and
``biases: [none, recency]`` once per bias, so the report can break results down by both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medagent.agents.planner import Role
from medagent.dialogue.cases import TEMPERAMENTS, DialogueCase, Temperament
from medagent.dialogue.protocol import Strategy
from medagent.studies.components import TargetRef

NO_BIAS = "none"

# The contract of a role implementation (``graph.roles.<role>: {_target_: ..., kwargs: {...}}``): it is called
# with these keyword arguments plus its ``kwargs``, once per consultation, and returns
# - planner (the doctor): a doctor speaker: ``served_model()``, ``begin(brief)``, ``respond(turns, *, final)``;
#   what the doctor knows (strategy, label set, expert hints, image summaries) arrives in ``begin``'s brief;
# - patient, measurement: a speaker: ``served_model()``, ``respond(turns) -> Reply`` (the patient's
#   ``respond([])`` is its opening);
# - assessor: an awaitable of an ``Assessment`` (so an ``async def`` scoring function fits).
# ``planner`` is the role's planner (``planners.<role>``); the built-ins are the defaults: DoctorAgent,
# SimulatedPatient, MeasurementAgent and simulators.assessor.assess.
ROLE_ARGUMENTS: dict[Role, tuple[str, ...]] = {
    "planner": ("planner",),
    "patient": ("planner", "case", "temperament", "biases"),
    "measurement": ("planner", "case"),
    "assessor": ("planner", "case", "outcome", "max_reasks"),
}


class DialogueGraph(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["dialogue"]
    strategy: Strategy = "dialogue"
    max_turns: int = Field(default=10, ge=1, le=100, description="doctor turns before a diagnosis is demanded")
    turn_timeout_s: float = Field(default=60.0, gt=0)
    dialogue_timeout_s: float = Field(default=600.0, gt=0)
    top_k: int = Field(default=3, ge=1, le=20, description="expert predictions put in the doctor's context")
    expert: str = Field(default="classify_chest_xray", description="the tool whose top-k predictions are shown")
    label_set: str = Field(
        default="auto", description="'auto' (the one the cases name, else open), 'open' (each case's own "
                                    "diagnosis), 'medagent-builtin', '3mdbench-34' (diagnoses_34.json next to "
                                    "the study or the cases), or a label-set file")
    temperaments: Literal["case", "each"] | list[Temperament] = Field(
        default="case", description="case: the case's own (cases without one cycle through the four); each: "
                                    "all four; or a list: every case once per listed temperament")
    biases: list[str] = Field(default_factory=list, description="patient biases, every case once per bias; "
                                                                "'none' for an unbiased run")
    assess: bool = Field(default=True, description="score each transcript with the assessor's rubric")
    max_reasks: int = Field(default=2, ge=0, le=5, description="assessor re-asks when its output does not parse")
    roles: dict[Role, TargetRef] = Field(
        default_factory=dict, description="your own implementation of a role (planner: the doctor, patient, "
                                          "measurement, assessor), called as ROLE_ARGUMENTS says; unnamed roles "
                                          "are the built-ins")

    @field_validator("biases")
    @classmethod
    def _known_biases(cls, value: list[str]) -> list[str]:
        from medagent.simulators.personas import patient_biases

        known = set(patient_biases())
        unknown = [name for name in value if name != NO_BIAS and name not in known]
        if unknown:
            raise ValueError(f"unknown bias '{unknown[0]}'; known: {NO_BIAS}, {', '.join(sorted(known))}")
        if len(set(value)) != len(value):
            raise ValueError("a bias is listed twice")
        return value

    def variants(self, case: DialogueCase, index: int) -> list[tuple[Temperament, str]]:
        """(temperament, bias) pairs this case runs with; ``index`` cycles temperaments for cases without one."""
        if self.temperaments == "each":
            temperaments: list[Temperament] = list(TEMPERAMENTS)
        elif self.temperaments == "case":
            temperaments = [case.temperament or TEMPERAMENTS[index % len(TEMPERAMENTS)]]
        else:
            temperaments = list(self.temperaments)
        biases = self.biases or [NO_BIAS]
        return [(temperament, bias) for temperament in temperaments for bias in biases]

    def multiplies(self) -> bool:
        """Whether a case runs more than once per repeat (then stored ids carry the variant)."""
        return self.temperaments == "each" or isinstance(self.temperaments, list) and len(self.temperaments) > 1 \
            or len(self.biases) > 1
