"""Patient personas as data: 3MDBench temperaments on five axes and AgentClinic-style biases.

The definitions live in ``data/temperaments.yaml`` and ``data/biases.yaml`` so that a study can cite
exactly what the simulated patient was told; this module only loads and validates them.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medagent.errors import ConfigurationError
from medagent.yaml_io import YamlFileError, load_yaml_string

BiasKind = Literal["cognitive", "implicit"]
AXES: tuple[str, ...] = (
    "symptom_description", "asks_questions", "communication_style", "treatment_attitude", "emotional_involvement",
)
_AXIS_TITLES: dict[str, str] = {
    "symptom_description": "How you describe symptoms",
    "asks_questions": "Whether you ask questions",
    "communication_style": "How you communicate",
    "treatment_attitude": "Your attitude to treatment",
    "emotional_involvement": "Your emotional involvement",
}


class UnknownPersona(ConfigurationError):
    """A temperament or bias name that the persona data does not define."""

    code = "unknown_persona"


class PersonaDataInvalid(ConfigurationError):
    """A persona data file does not match its schema (names the file and the field)."""

    code = "persona_data_invalid"


class TemperamentProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    symptom_description: str = Field(min_length=1)
    asks_questions: str = Field(min_length=1)
    communication_style: str = Field(min_length=1)
    treatment_attitude: str = Field(min_length=1)
    emotional_involvement: str = Field(min_length=1)

    def axes(self) -> dict[str, str]:
        """The five axes in their canonical order."""
        return {axis: str(getattr(self, axis)) for axis in AXES}

    def prompt_lines(self) -> list[str]:
        """One instruction line per axis, for the patient's system prompt."""
        return [f"- {_AXIS_TITLES[axis]}: {text}" for axis, text in self.axes().items()]


class PatientBias(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    kind: BiasKind
    instruction: str = Field(min_length=1)


def _load(file_name: str) -> Any:
    resource = importlib.resources.files("medagent.simulators") / "data" / file_name
    try:
        return load_yaml_string(resource.read_text(encoding="utf-8"), file_name)
    except YamlFileError as exc:
        raise PersonaDataInvalid(exc.message) from None


@lru_cache(maxsize=1)
def temperament_profiles() -> dict[str, TemperamentProfile]:
    """Every temperament by name, in file order."""
    data = _load("temperaments.yaml")
    try:
        return {name: TemperamentProfile(name=name, **axes) for name, axes in data["temperaments"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise PersonaDataInvalid("temperaments.yaml: expected a 'temperaments' mapping of name -> axes") from exc
    except ValidationError as exc:
        fields = ", ".join(".".join(str(part) for part in error["loc"]) for error in exc.errors())
        raise PersonaDataInvalid(f"temperaments.yaml: invalid or missing fields: {fields}") from exc


@lru_cache(maxsize=1)
def patient_biases() -> dict[str, PatientBias]:
    """Every patient bias by name, in file order."""
    data = _load("biases.yaml")
    try:
        biases = [PatientBias.model_validate(entry) for entry in data["biases"]]
    except (KeyError, TypeError) as exc:
        raise PersonaDataInvalid("biases.yaml: expected a 'biases' list") from exc
    except ValidationError as exc:
        fields = ", ".join(".".join(str(part) for part in error["loc"]) for error in exc.errors())
        raise PersonaDataInvalid(f"biases.yaml: invalid or missing fields: {fields}") from exc
    by_name = {bias.name: bias for bias in biases}
    if len(by_name) != len(biases):
        raise PersonaDataInvalid("biases.yaml: a bias name appears twice")
    return by_name


def temperament_profile(name: str) -> TemperamentProfile:
    profiles = temperament_profiles()
    if name not in profiles:
        raise UnknownPersona(f"unknown temperament {name!r}; known: {', '.join(profiles)}", known=list(profiles))
    return profiles[name]


def patient_bias(name: str) -> PatientBias:
    biases = patient_biases()
    if name not in biases:
        raise UnknownPersona(f"unknown patient bias {name!r}; known: {', '.join(biases)}", known=list(biases))
    return biases[name]
