"""AgentClinic OSCE JSONL into :class:`DialogueCase` (schema: the dataset's SOURCES.md).

Patient_Actor becomes the patient's facts, examination findings and test results the examiner's;
ids are the file stem and the line number, stable across loads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medagent.dialogue.cases import DialogueCase, ExaminerFacts, PatientFacts
from medagent.simulators.case_files import CaseFileError, bounded_lines, open_case_file
from medagent.yaml_located import format_field

_AGE = re.compile(r"\b(\d{1,3})-year-old\b", re.IGNORECASE)
_INFANT = re.compile(r"\b(newborn|\d{1,2}-(day|week|month)-old)\b", re.IGNORECASE)
_FEMALE = re.compile(r"\b(female|woman|girl)\b", re.IGNORECASE)
_MALE = re.compile(r"\b(male|man|boy)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# -- AgentClinic -----------------------------------------------------------------------------

_PATIENT_TEXT = {"Demographics": "demographics", "History": "history", "Past_Medical_History": "past_medical_history",
                 "Social_History": "social_history", "Review_of_Systems": "review_of_systems"}


def _text(value: Any) -> str:
    """Nested case data as one line: lists joined with '; ', dict keys kept as labels ('Alcohol use: ...')."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "; ".join(text for text in map(_text, value) if text)
    if isinstance(value, dict):
        return "; ".join(f"{str(key).replace('_', ' ')}: {text}"
                         for key, item in value.items() if (text := _text(item)))
    return str(value)


def _mapping(record: dict[str, Any], key: str, loc: str, path: Path, line: int, *, required: bool) -> dict[str, Any]:
    value = record.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        problem = "required field is missing" if value is None else "must be an object"
        raise CaseFileError.at(path, f"{loc}.{key}" if loc else key, problem, line=line)
    return value


def demographic_subgroups(demographics: str) -> dict[str, str]:
    """``age_band`` (decade, '0-9' for infants) and ``sex`` where the text states them plainly; nothing is guessed."""
    groups: dict[str, str] = {}
    ages = {int(match) for match in _AGE.findall(demographics)}
    if len(ages) == 1:
        decade = (ages.pop() // 10) * 10
        groups["age_band"] = f"{decade}-{decade + 9}"
    elif not ages and _INFANT.search(demographics):
        groups["age_band"] = "0-9"
    female, male = bool(_FEMALE.search(demographics)), bool(_MALE.search(demographics))
    if female != male:
        groups["sex"] = "female" if female else "male"
    return groups


def _agentclinic_case(record: Any, path: Path, line: int) -> DialogueCase:
    if not isinstance(record, dict):
        raise CaseFileError.at(path, "(line)", "must be a JSON object", line=line)
    osce = _mapping(record, "OSCE_Examination", "", path, line, required=True)
    loc = "OSCE_Examination"
    actor = _mapping(osce, "Patient_Actor", loc, path, line, required=True)
    symptoms = _mapping(actor, "Symptoms", f"{loc}.Patient_Actor", path, line, required=False)
    facts: dict[str, Any] = {field: _text(actor.get(key)) for key, field in _PATIENT_TEXT.items()}
    # fields outside the schema (medications, drug or family history) are still the patient's to tell
    extra = [f"{key.replace('_', ' ')}: {text}" for key, value in actor.items()
             if key not in _PATIENT_TEXT and key != "Symptoms" and (text := _text(value))]
    facts["past_medical_history"] = "\n".join(part for part in (facts["past_medical_history"], *extra) if part)
    primary = _text(symptoms.get("Primary_Symptom"))
    if not primary and facts["history"]:  # one case lists no symptoms: it opens with its history's first sentence
        primary = _SENTENCE_END.split(facts["history"], maxsplit=1)[0]
    if not primary:
        raise CaseFileError.at(path, f"{loc}.Patient_Actor.Symptoms.Primary_Symptom", "required field is missing",
                               line=line)
    facts["primary_symptom"] = primary
    secondary = symptoms.get("Secondary_Symptoms") or []
    facts["secondary_symptoms"] = [text for text in map(_text, secondary if isinstance(secondary, list)
                                                        else [secondary]) if text]
    diagnosis = osce.get("Correct_Diagnosis")
    if not isinstance(diagnosis, str) or not diagnosis.strip():
        raise CaseFileError.at(path, f"{loc}.Correct_Diagnosis", "must be a non-empty string", line=line)
    examiner = {field: _examiner_section(osce, key, loc, path, line) for key, field in
                (("Physical_Examination_Findings", "physical_examination"), ("Test_Results", "test_results"))}
    try:
        return DialogueCase(
            case_id=f"{path.stem}-{line:04d}", source="agentclinic", objective=_text(osce.get("Objective_for_Doctor")),
            patient=PatientFacts(**facts), examiner=ExaminerFacts(**examiner), diagnosis=diagnosis.strip(),
            subgroups=demographic_subgroups(facts["demographics"]))
    except ValidationError as exc:
        raise CaseFileError.at(path, format_field(exc.errors()[0]["loc"]), "invalid value", line=line) from None


def _examiner_section(osce: dict[str, Any], key: str, loc: str, path: Path, line: int) -> dict[str, Any]:
    value = osce.get(key)
    if isinstance(value, str):
        return {"Findings": value} if value.strip() else {}
    return _mapping(osce, key, loc, path, line, required=False)


def load_agentclinic(path: Path) -> list[DialogueCase]:
    """AgentClinic OSCE cases, one JSON object per line; blank lines are skipped."""
    cases = []
    with open_case_file(path) as stream:
        for line, raw in bounded_lines(stream, path):
            try:
                record = json.loads(raw)
                cases.append(_agentclinic_case(record, path, line))
            except json.JSONDecodeError as exc:
                raise CaseFileError.at(path, "(line)", f"not valid JSON: {exc.msg} at column {exc.colno}",
                                       line=line) from None
            except RecursionError:  # nesting deeper than the interpreter allows: no case is built that deep
                raise CaseFileError.at(path, "(line)", "nested too deeply", line=line) from None
            except ValueError:  # a number past Python's digit limit for int conversion
                raise CaseFileError.at(path, "(line)", "not valid JSON: a number too long", line=line) from None
    return cases

