"""The diagnostic dialogue protocol (AgentClinic / 3MDBench): who speaks when, and when it stops.

The patient opens with the main complaint; the doctor asks one question, requests one test (answered
by the measurement agent) or gives the final diagnosis; the patient answers. The dialogue ends on the
doctor's diagnosis, the patient's stop signal, the turn limit (where the doctor is asked once for a
final diagnosis) or a timeout. Any role may be a model or a human: each is a :class:`Speaker`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from medagent.dialogue.cases import DialogueCase
from medagent.dialogue.labels import NONE_LABEL, LabelSet, canonical_text
from medagent.errors import ConfigurationError, PlannerTimeout

Strategy = Literal["one_shot", "dialogue", "dialogue_with_experts"]
Role = Literal["doctor", "patient", "measurement"]
Action = Literal["ask", "request_test", "diagnose", "answer", "stop"]
StopReason = Literal["diagnosis", "patient_stop", "turn_limit", "timeout"]
_ACTIONS: dict[Role, frozenset[str]] = {
    "doctor": frozenset({"ask", "request_test", "diagnose"}),
    "patient": frozenset({"answer", "stop"}),
    "measurement": frozenset({"answer"}),
}
_DIAGNOSIS_READY = re.compile(r"diagnosis\s+ready\s*:\s*(.+)", re.IGNORECASE)


class SpeakerProtocolError(ConfigurationError):
    """A speaker replied with an action its role may not take (a wiring mistake, not a model error)."""

    code = "speaker_protocol"


class DialogueSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = "dialogue"
    max_turns: int = Field(default=10, ge=1, description="doctor turns, the forced final diagnosis included")
    turn_timeout_s: float = Field(default=60, gt=0, description="per model turn (human turns are not timed)")
    dialogue_timeout_s: float = Field(default=600, gt=0)
    top_k: int = Field(default=3, ge=1, description="expert hints shown to the doctor (dialogue_with_experts)")
    patient_closing: bool = Field(default=True, description="after the diagnosis the patient replies once, then stops")


class Turn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    speaker: Role
    action: Action
    text: str
    note: str = Field(default="", description="the doctor's explanation with a diagnosis")
    elapsed_s: float = Field(ge=0)
    model: str | None = Field(default=None, description="model id as reported for this reply; None for none")


class ExpertHint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(min_length=1)
    probability: float = Field(ge=0, le=1)
    tool: str = Field(min_length=1)


class Reply(BaseModel):
    """What a speaker says in one turn; the protocol turns it into a :class:`Turn`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Action
    text: str
    note: str = ""
    model: str | None = None
    redacted: int = Field(default=0, ge=0, description="diagnosis mentions removed by the leak guard")


class DoctorBrief(BaseModel):
    """What the doctor knows before the first turn; hints only under ``dialogue_with_experts``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = "dialogue"
    max_turns: int = Field(default=10, ge=1)
    label_set: LabelSet | None = None
    hints: list[ExpertHint] = Field(default_factory=list)
    image_summaries: dict[str, dict[str, Any]] = Field(default_factory=dict)
    objective: str = ""


class DialogueOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case_id: str
    turns: list[Turn]
    stop_reason: StopReason
    diagnosis_text: str | None
    diagnosis: str | None = Field(description="a label, 'none', or None when absent or naming no label")
    leaks_redacted: int = Field(ge=0)
    models: dict[str, str] = Field(description="role -> model id as served")
    strategy: Strategy
    elapsed_s: float = Field(default=0.0, ge=0)
    timed_out: Role | None = Field(default=None, description="the role whose turn ran out of time (the patient's "
                                                             "closing reply included)")


class Speaker(Protocol):
    """The patient's or the measurement agent's side. ``respond([])`` is the patient's opening."""

    async def served_model(self) -> str | None: ...

    async def respond(self, turns: list[Turn]) -> Reply: ...


class DoctorSpeaker(Protocol):
    async def served_model(self) -> str | None: ...

    async def begin(self, brief: DoctorBrief) -> None: ...

    async def respond(self, turns: list[Turn], *, final: bool = False) -> Reply:
        """``final``: this turn must be a diagnosis (one shot, or the turn limit reached)."""
        ...


def render_transcript(turns: Iterable[Turn]) -> str:
    """The dialogue as plain lines, for the assessor and for reports."""
    labels = {"ask": "", "request_test": " (requests test)", "diagnose": " (diagnosis)", "answer": "",
              "stop": " (ends)"}
    lines = []
    for turn in turns:
        text = f"{turn.text} - {turn.note}" if turn.note else turn.text
        lines.append(f"{turn.speaker.capitalize()}{labels[turn.action]}: {text}")
    return "\n".join(lines)


def diagnosis_text(turns: Sequence[Turn]) -> str | None:
    """The doctor's diagnose turn, else the last 'DIAGNOSIS READY: ...' line a doctor wrote."""
    for turn in reversed(turns):
        if turn.speaker == "doctor" and turn.action == "diagnose":
            return turn.text.strip()
    for turn in reversed(turns):
        match = _DIAGNOSIS_READY.search(turn.text) if turn.speaker == "doctor" else None
        if match:
            return match.group(1).strip()
    return None


def extract_diagnosis(turns: Sequence[Turn], label_set: LabelSet | None) -> str | None:
    """The doctor's diagnosis normalised through ``label_set``; without one, the text itself ('none' folded)."""
    text = diagnosis_text(turns)
    if text is None:
        return None
    if label_set is not None:
        return label_set.normalise(text)
    return NONE_LABEL if canonical_text(text) == NONE_LABEL else (text or None)


class _Run:
    def __init__(self, settings: DialogueSettings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.deadline = self.started + settings.dialogue_timeout_s
        self.turns: list[Turn] = []
        self.leaks = 0
        self.timed_out: Role | None = None

    async def speak(self, role: Role, speaker: object, call: Callable[[], Awaitable[Reply]]) -> Reply | None:
        """One turn, recorded; None when it timed out (per turn, the whole dialogue, or the planner's own
        read timeout)."""
        began = time.monotonic()
        try:
            if getattr(speaker, "timed", True):
                budget = min(self.settings.turn_timeout_s, self.deadline - began)
                if budget <= 0:
                    raise TimeoutError
                async with asyncio.timeout(budget):
                    reply = await call()
            else:
                reply = await call()
        except (TimeoutError, PlannerTimeout):
            self.timed_out = role
            return None
        if reply.action not in _ACTIONS[role]:
            raise SpeakerProtocolError(f"the {role} replied with action {reply.action!r}; allowed: "
                                       f"{', '.join(sorted(_ACTIONS[role]))}")
        self.leaks += reply.redacted
        self.turns.append(Turn(index=len(self.turns), speaker=role, action=reply.action, text=reply.text,
                               note=reply.note, elapsed_s=time.monotonic() - began, model=reply.model))
        return reply


async def run_dialogue(case: DialogueCase, *, doctor: DoctorSpeaker, patient: Speaker, measurement: Speaker,
                       label_set: LabelSet | None, settings: DialogueSettings,
                       hints: Sequence[ExpertHint] = (),
                       image_summaries: dict[str, dict[str, Any]] | None = None) -> DialogueOutcome:
    """Run one dialogue to its end. A planner timeout ends it like a turn timeout; other planner failures
    propagate as their typed errors."""
    models: dict[str, str] = {}
    for role, speaker in (("doctor", doctor), ("patient", patient), ("measurement", measurement)):
        served = await speaker.served_model()
        if served:
            models[role] = served
    run = _Run(settings)
    strategy = settings.strategy
    shown = sorted(hints, key=lambda hint: hint.probability, reverse=True)[: settings.top_k]
    await doctor.begin(DoctorBrief(
        strategy=strategy, max_turns=1 if strategy == "one_shot" else settings.max_turns, label_set=label_set,
        hints=shown if strategy == "dialogue_with_experts" else [], image_summaries=dict(image_summaries or {}),
        objective="" if strategy == "one_shot" else case.objective))

    def finish(reason: StopReason) -> DialogueOutcome:
        return DialogueOutcome(
            case_id=case.case_id, turns=run.turns, stop_reason=reason, diagnosis_text=diagnosis_text(run.turns),
            diagnosis=extract_diagnosis(run.turns, label_set), leaks_redacted=run.leaks, models=models,
            strategy=strategy, elapsed_s=time.monotonic() - run.started, timed_out=run.timed_out)

    opening = await run.speak("patient", patient, lambda: patient.respond([]))
    if opening is None:
        return finish("timeout")
    if opening.action == "stop":
        return finish("patient_stop")
    for doctor_turn in range(settings.max_turns):
        final = strategy == "one_shot" or doctor_turn == settings.max_turns - 1
        seen = list(run.turns)
        step = await run.speak("doctor", doctor, partial(doctor.respond, seen, final=final))
        if step is None:
            return finish("timeout")
        if step.action == "diagnose":
            if settings.patient_closing:
                closing_view = list(run.turns)
                await run.speak("patient", patient, partial(patient.respond, closing_view))  # a timeout ends it too
            return finish("turn_limit" if final and strategy != "one_shot" else "diagnosis")
        if final:
            return finish("turn_limit")  # a doctor that would not diagnose on its last turn
        view = list(run.turns)
        if step.action == "request_test":
            if await run.speak("measurement", measurement, partial(measurement.respond, view)) is None:
                return finish("timeout")
            continue
        answer = await run.speak("patient", patient, partial(patient.respond, view))
        if answer is None:
            return finish("timeout")
        if answer.action == "stop":
            return finish("patient_stop")
    return finish("turn_limit")
