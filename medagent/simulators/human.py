"""Human speakers (AgentClinic's human modes): a person plays the doctor or the patient.

Each takes an async ``ask(prompt) -> answer`` callable; the CLI wires it to a terminal prompt and tests
pass scripted callables. Human turns are not held to model turn timeouts.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Literal

from medagent.dialogue.labels import NONE_LABEL
from medagent.dialogue.protocol import DoctorBrief, Reply, Turn
from medagent.simulators.patient import STOP_SIGNAL, split_stop

AskFunction = Callable[[str], Awaitable[str]]
HUMAN_MODEL = "human"
_TEST_PREFIXES = ("request test:", "test:", "exam:")
_DIAGNOSIS_PREFIXES = ("diagnosis ready:", "diagnosis:", "diagnose:")


class HumanSpeaker:
    timed = False  # run_dialogue applies no per-turn or dialogue timeout to a person

    def __init__(self, ask: AskFunction) -> None:
        self.ask = ask

    async def served_model(self) -> str:
        return HUMAN_MODEL


def _strip_prefix(text: str, prefixes: tuple[str, ...]) -> str | None:
    lowered = text.lower()
    for prefix in prefixes:
        if lowered.startswith(prefix):
            return text[len(prefix):].strip()
    return None


class HumanDoctor(HumanSpeaker):
    """Type a question; ``test: <name>`` to order a test; ``diagnosis: <name>`` to conclude."""

    def __init__(self, ask: AskFunction, *, max_attempts: int = 3) -> None:
        super().__init__(ask)
        self.max_attempts = max_attempts
        self.brief = DoctorBrief()
        self._briefed = False

    async def begin(self, brief: DoctorBrief) -> None:
        self.brief = brief
        self._briefed = False

    def _brief_lines(self) -> list[str]:
        brief, lines = self.brief, []
        if brief.objective:
            lines.append(f"Task: {brief.objective}")
        for image_id, summary in brief.image_summaries.items():
            lines.append(f"Image {image_id}: {json.dumps(summary, default=str)}")
        for hint in brief.hints:
            lines.append(f"Expert hint: {hint.label} ({hint.probability:.2f}, {hint.tool})")
        if brief.label_set is not None and brief.label_set.closed:
            lines.append(f"Allowed diagnoses: {', '.join(brief.label_set.names)}, or {NONE_LABEL}")
        return lines

    def _prompt(self, turns: list[Turn], final: bool) -> str:
        last_doctor = max((turn.index for turn in turns if turn.speaker == "doctor"), default=-1)
        lines = [] if self._briefed else self._brief_lines()
        self._briefed = True
        lines += [f"{turn.speaker.capitalize()}: {turn.text}" for turn in turns if turn.index > last_doctor]
        if final:
            lines.append("Your final diagnosis:")
        else:
            lines.append("Ask one question, or type 'test: <name>' to order a test, "
                         "or 'diagnosis: <name>' to conclude:")
        return "\n".join(lines)

    def _parse(self, typed: str, final: bool) -> tuple[Literal["ask", "request_test", "diagnose"], str]:
        diagnosis = _strip_prefix(typed, _DIAGNOSIS_PREFIXES)
        if final or diagnosis is not None:
            return "diagnose", diagnosis if diagnosis is not None else typed
        test = _strip_prefix(typed, _TEST_PREFIXES)
        return ("request_test", test) if test is not None else ("ask", typed)

    async def respond(self, turns: list[Turn], *, final: bool = False) -> Reply:
        prompt = self._prompt(turns, final)
        label_set = self.brief.label_set
        action: Literal["ask", "request_test", "diagnose"] = "ask"
        text = ""
        for attempt in range(self.max_attempts):
            action, text = self._parse((await self.ask(prompt)).strip(), final)
            if label_set is None or not label_set.closed or action != "diagnose" or attempt == self.max_attempts - 1:
                break
            if label_set.normalise(text) is not None:
                break
            prompt = f"Not an allowed diagnosis. Choose one of: {', '.join(label_set.names)}, or {NONE_LABEL}:"
        return Reply(action=action, text=text, model=HUMAN_MODEL)


class HumanPatient(HumanSpeaker):
    """Type the patient's words; end with ``[END]`` (or type ``/end``) to leave."""

    async def respond(self, turns: list[Turn]) -> Reply:
        doctor = next((turn for turn in reversed(turns) if turn.speaker == "doctor"), None)
        if not any(turn.speaker == "patient" for turn in turns):
            prompt = "You are the patient. Tell the doctor your main complaint:"
        elif doctor is not None and doctor.action == "diagnose":
            prompt = f"Doctor's conclusion: {doctor.text}. {doctor.note}\nYour reply (end with {STOP_SIGNAL}):"
        else:
            prompt = f"Doctor: {doctor.text if doctor else ''}\nYour answer ({STOP_SIGNAL} to leave):"
        typed = (await self.ask(prompt)).strip()
        if typed.lower() == "/end":
            return Reply(action="stop", text="", model=HUMAN_MODEL)
        text, stop = split_stop(typed)
        return Reply(action="stop" if stop else "answer", text=text, model=HUMAN_MODEL)
