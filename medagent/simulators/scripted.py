"""Deterministic keyword baselines for every consultation role: for exact tests of the protocol and
for studies that check orchestration at scale (``medagent run`` with no model server).

They read only what the role's real prompt gives them (case data as fenced JSON): the patient answers
from its own facts, the measurement agent from the findings it is shown, the doctor picks the label of
a closed label set that shares most words with the conversation (else "none"), and the assessor scores
what it can count in the transcript. Usable from study YAML::

    planners:
      patient: {backend: {_target_: medagent.simulators.scripted.scripted_role, kwargs: {role: patient}}}
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from medagent.agents.planner import PlannerConfig, Role
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner
from medagent.simulators.measurement import NORMAL_READINGS
from medagent.simulators.patient import STOP_SIGNAL

ScriptedRole = Role  # "planner" is the doctor
_WORD = re.compile(r"[a-z]{4,}")
_QUESTIONS = ("What brings you in today?", "When did it start, and has it changed since?",
              "Have you taken anything for it, and did it help?")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _best_line(lines: list[str], query: str) -> str | None:
    """The line sharing most words with ``query`` (the first on ties); None when none shares any."""
    wanted = _words(query)
    scored = [(len(wanted & _words(line)), -index, line) for index, line in enumerate(lines)]
    best = max(scored, default=(0, 0, None))
    return best[2] if best[0] > 0 else None


def _fenced(request: PlannerRequest) -> list[Any]:
    """The fenced JSON data of the request's user turns (case facts, findings, a transcript), in order."""
    found = []
    for message in request.messages:
        if message["role"] == "user":
            found += [json.loads(part.split("\n```", 1)[0]) for part in str(message["content"]).split("```json\n")[1:]]
    return found


def _patient(request: PlannerRequest) -> str:
    system, last = str(request.messages[0]["content"]), str(request.messages[-1]["content"])
    facts: dict[str, str] = next((data for data in _fenced(request) if isinstance(data, dict)), {})
    if "starting a consultation" in system:  # the opening's facts hold the main complaint only
        return facts.get("Main complaint", "I don't feel well.")
    if STOP_SIGNAL in last:
        return f"Thank you, doctor. Goodbye. {STOP_SIGNAL}"
    line = _best_line([f"{title}: {value}" for title, value in facts.items()], last.removeprefix("Doctor:"))
    return line.split(":", 1)[1].strip() if line else "I don't know."


def _measurement(request: PlannerRequest) -> str:
    findings = next((data for data in _fenced(request) if isinstance(data, list)), [])
    line = _best_line([str(f) for f in findings], str(request.messages[-1]["content"]).split("Request:", 1)[-1])
    return f"RESULTS: {line.strip()}" if line else NORMAL_READINGS


def _doctor(request: PlannerRequest, questions: tuple[str, ...], tests: tuple[str, ...]) -> str:
    schema = request.response_schema or {}
    options = schema.get("anyOf", [schema])
    final = all(option.get("properties", {}).get("action", {}).get("enum") == ["diagnose"] for option in options)
    spoken = sum(1 for message in request.messages if message["role"] == "assistant")
    if not final and spoken < len(questions):
        return json.dumps({"action": "ask", "text": questions[spoken]})
    if not final and spoken < len(questions) + len(tests):
        return json.dumps({"action": "request_test", "text": tests[spoken - len(questions)]})
    diagnose = next(option for option in options if option["properties"]["action"]["enum"] == ["diagnose"])
    choices = [str(c) for c in diagnose["properties"]["text"].get("enum", []) if c != "none"]
    brief = next((data for data in _fenced(request) if isinstance(data, dict)), {})
    hints = brief.get("expert_top_predictions", [])
    heard = (" ".join(str(hint.get("label", "")) for hint in hints) if hints
             else " ".join(str(m["content"]) for m in request.messages if m["role"] in ("user", "system")))
    label = _best_line(choices, heard) or "none"
    return json.dumps({"action": "diagnose", "text": label,
                       "explanation": f"Keyword baseline after {spoken} turns; rest and review."})


def _assessor(request: PlannerRequest, malformed: int) -> str:
    if request.call_index < malformed:
        return '{"history": "yes"}'  # not the rubric: the assessor's re-ask path
    lines = [str(line) for data in _fenced(request) if isinstance(data, list) for line in data]
    transcript = "\n".join(lines)
    asked = sum(1 for line in lines if line.startswith("Doctor: "))
    tests = sum(1 for line in lines if line.startswith("Doctor (requests test):"))
    diagnosed = "Doctor (diagnosis):" in transcript and "Doctor (diagnosis): none" not in transcript
    scores: dict[str, Any] = {
        "history": int(asked >= 1), "current_symptoms": int(asked >= 2), "explains_conclusion": int(diagnosed),
        "respect_empathy": int("thank" in transcript.lower()), "respects_wishes": 1,
        "diagnostic_plan": int(tests >= 1), "treatment_plan": int(diagnosed),
    }
    total = sum(scores.values())
    scores["overall"] = "excellent" if total >= 6 else "satisfactory" if total >= 4 else "unsatisfactory"
    return json.dumps(scores)


def scripted_role(role: ScriptedRole, *, questions: list[str] | None = None, tests: list[str] | None = None,
                  malformed: int = 0, latency_s: float = 0.0, config: PlannerConfig | None = None
                  ) -> ScriptedPlanner:
    """A keyword baseline for ``role`` (``planner`` is the doctor). ``malformed``: the assessor's first
    replies that are not a rubric (every reply when it exceeds the re-asks); ``latency_s`` per reply."""
    asked = tuple(questions) if questions is not None else _QUESTIONS[:2]
    ordered = tuple(tests) if tests is not None else ("vital signs",)

    async def script(request: PlannerRequest) -> str:
        if latency_s:
            await asyncio.sleep(latency_s)
        if role == "patient":
            return _patient(request)
        if role == "measurement":
            return _measurement(request)
        if role == "assessor":
            return _assessor(request, malformed)
        return _doctor(request, asked, ordered)

    return ScriptedPlanner(script, model=f"scripted:{role}", config=config)
