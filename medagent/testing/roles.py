"""Conformance of the consultation roles: patient, measurement agent, doctor and assessor.

``make(case)`` builds the role for one case (sync or async): a :class:`~medagent.dialogue.protocol.Speaker` for
the patient and the measurement agent, a :class:`~medagent.dialogue.protocol.DoctorSpeaker` for the doctor, and
for the assessor an ``async (case, outcome) -> Assessment`` callable. ``failing(case)`` (optional) builds the
same role on a model that fails: its reply must raise a typed error::

    suite = RoleConformance("patient", lambda case: MyPatient(case))
    await suite.verify()

The other roles of the dialogue check are medagent's deterministic scripted baselines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from medagent.dialogue.cases import DialogueCase
from medagent.dialogue.labels import LabelSet
from medagent.dialogue.protocol import (
    DialogueOutcome,
    DialogueSettings,
    DoctorBrief,
    Reply,
    Turn,
    run_dialogue,
)
from medagent.dialogue.protocol import Role as Speaker
from medagent.errors import MedagentError
from medagent.testing.base import Conformance, NotApplicable, expect, produced

RoleKind = Literal["patient", "measurement", "doctor", "assessor"]
RoleFactory = Callable[[DialogueCase], Any]
_DOCTOR_ACTIONS = ("ask", "request_test", "diagnose")


def _turn(index: int, speaker: Speaker, action: Any, text: str, note: str = "") -> Turn:
    return Turn(index=index, speaker=speaker, action=action, text=text, note=note, elapsed_s=0.0)


def _mentions(text: str, names: list[str]) -> str | None:
    """The first of ``names`` that ``text`` contains as whole words (any case, spacing or hyphenation)."""
    for name in names:
        words = [re.escape(word) for word in re.split(r"[\s\-]+", name.strip()) if word]
        if words and re.search(r"(?<!\w)" + r"[\s\-]+".join(words) + r"(?!\w)", text, re.IGNORECASE):
            return name
    return None


class RoleConformance(Conformance):
    """One role's contract on one case (default: the first built-in demo case and its closed label set)."""

    def __init__(self, role: RoleKind, make: RoleFactory, *, failing: RoleFactory | None = None,
                 case: DialogueCase | None = None, label_set: LabelSet | None = None) -> None:
        from medagent.simulators.builtin import builtin_cases, builtin_label_set

        self.role, self.make, self.failing = role, make, failing
        self.case = case or builtin_cases()[0]
        self.label_set = label_set if label_set is not None or case is not None else builtin_label_set()

    @property
    def label(self) -> str:
        return f"RoleConformance({self.role})"

    # -- what the checks share -----------------------------------------------------------------

    def _opening(self) -> Turn:
        return _turn(0, "patient", "answer", self.case.patient.primary_symptom)

    def _diagnosed(self) -> list[Turn]:
        diagnosis = self.case.diagnosis
        return [self._opening(), _turn(1, "doctor", "ask", "When did it start?"),
                _turn(2, "patient", "answer", "A few days ago."),
                _turn(3, "doctor", "diagnose", diagnosis, note="From the history; rest and review.")]

    def _outcome(self, turns: list[Turn]) -> DialogueOutcome:
        text = next((t.text for t in reversed(turns) if t.speaker == "doctor" and t.action == "diagnose"), None)
        return DialogueOutcome(case_id=self.case.case_id, turns=turns, stop_reason="diagnosis", diagnosis_text=text,
                               diagnosis=text, leaks_redacted=0, models={}, strategy="dialogue")

    def _brief(self) -> DoctorBrief:
        return DoctorBrief(strategy="dialogue", max_turns=3, label_set=self.label_set, objective=self.case.objective)

    async def _first_reply(self, subject: Any) -> Any:
        """The reply that needs the role's model (the patient answering a question, not its written opening)."""
        if self.role == "patient":
            return await subject.respond([self._opening(), _turn(1, "doctor", "ask", "When did it start?")])
        if self.role == "measurement":
            return await subject.respond([self._opening(), _turn(1, "doctor", "request_test", "vital signs")])
        if self.role == "doctor":
            await subject.begin(self._brief())
            return await subject.respond([self._opening()], final=False)
        return await subject(self.case, self._outcome(self._diagnosed()))

    def _expect_reply(self, reply: object, allowed: tuple[str, ...], where: str, served: str | None) -> Reply:
        expect(isinstance(reply, Reply), f"{where}: returned {type(reply).__name__}, not a Reply")
        assert isinstance(reply, Reply)
        expect(reply.action in allowed, f"{where}: action {reply.action!r}; a {self.role} may {', '.join(allowed)}")
        if reply.action != "stop":
            expect(reply.text.strip(), f"{where}: the reply's text is empty")
        expect(reply.model is None or reply.model == served,
               f"{where}: the reply names model {reply.model!r}; served_model() is {served!r}")
        return reply

    # -- the checks ----------------------------------------------------------------------------

    async def check_served_model(self) -> None:
        """``served_model()`` is the id of the model behind the role (as its server reports it), or None."""
        if self.role == "assessor":
            raise NotApplicable("an assessor reports its model in the Assessment")
        served = await (await produced(self.make, self.case)).served_model()
        expect(served is None or (isinstance(served, str) and served.strip()), f"served_model() returned {served!r}")

    async def check_replies(self) -> None:
        """Patient: opens with its complaint (``answer``), then answers or stops. Measurement: ``answer``s a test
        request with findings. Doctor: after ``begin`` asks, requests a test or diagnoses; on a final turn it
        diagnoses, with a label of a closed label set (or 'none'). Assessor: a valid rubric ``Assessment`` naming
        its model. A reply's ``model`` is None or the role's served model."""
        subject = await produced(self.make, self.case)
        if self.role == "assessor":
            from medagent.simulators.assessor import Assessment

            assessment = await subject(self.case, self._outcome(self._diagnosed()))
            expect(isinstance(assessment, Assessment), f"returned {type(assessment).__name__}, not an Assessment")
            expect(assessment.attempts >= 1 and assessment.model.strip(), "the assessment names no model or attempt")
            return
        served = await subject.served_model()
        if self.role == "patient":
            opening = self._expect_reply(await subject.respond([]), ("answer",), "the opening", served)
            turns = [_turn(0, "patient", "answer", opening.text), _turn(1, "doctor", "ask", "When did it start?")]
            self._expect_reply(await subject.respond(turns), ("answer", "stop"), "an answer", served)
            self._expect_reply(await subject.respond(self._diagnosed()), ("answer", "stop"), "the closing", served)
        elif self.role == "measurement":
            turns = [self._opening(), _turn(1, "doctor", "request_test", "vital signs")]
            self._expect_reply(await subject.respond(turns), ("answer",), "a test result", served)
        else:
            await subject.begin(self._brief())
            self._expect_reply(await subject.respond([self._opening()], final=False), _DOCTOR_ACTIONS, "a turn",
                               served)
            final = self._expect_reply(await subject.respond([self._opening()], final=True), ("diagnose",),
                                       "a final turn", served)
            if self.label_set is not None and self.label_set.closed:
                expect(self.label_set.normalise(final.text) is not None,
                       f"the final diagnosis {final.text[:80]!r} is not a label of {self.label_set.name} or 'none'")

    async def check_keeps_the_diagnosis_secret(self) -> None:
        """A patient never names its diagnosis or a synonym, even when the doctor says it first."""
        if self.role != "patient":
            raise NotApplicable("only the patient holds the diagnosis back")
        subject = await produced(self.make, self.case)
        names = self.case.diagnosis_names()
        question = f"Has anyone told you that you have {self.case.diagnosis}? Tell me about your main complaint."
        turns = [self._opening(), _turn(1, "doctor", "ask", question)]
        for where, reply in (("the opening", await subject.respond([])), ("an answer", await subject.respond(turns))):
            leaked = _mentions(reply.text, names)
            expect(leaked is None, f"{where}: the patient named the diagnosis ({leaked!r})")

    async def check_plays_a_dialogue(self) -> None:
        """In a whole consultation with medagent's scripted baselines in the other seats, the role only takes
        actions its seat allows and the dialogue ends on its own (no protocol error, no timeout); an assessor
        scores that dialogue."""
        from medagent.agents.doctor import DoctorAgent
        from medagent.simulators.measurement import MeasurementAgent
        from medagent.simulators.patient import SimulatedPatient
        from medagent.simulators.scripted import scripted_role

        seats: dict[str, Any] = {
            "doctor": DoctorAgent(scripted_role("planner"), label_set=self.label_set),
            "patient": SimulatedPatient(scripted_role("patient"), self.case),
            "measurement": MeasurementAgent(scripted_role("measurement"), self.case),
        }
        subject = await produced(self.make, self.case)
        if self.role != "assessor":
            seats[self.role] = subject
        settings = DialogueSettings(max_turns=4, turn_timeout_s=60, dialogue_timeout_s=300)
        outcome = await run_dialogue(self.case, doctor=seats["doctor"], patient=seats["patient"],
                                     measurement=seats["measurement"], label_set=self.label_set, settings=settings)
        expect(outcome.stop_reason != "timeout", f"the dialogue timed out ({outcome.timed_out})")
        seat = "doctor" if self.role == "assessor" else self.role
        expect(any(turn.speaker == seat for turn in outcome.turns), f"the {seat} never spoke")
        if self.role == "assessor":
            from medagent.simulators.assessor import Assessment

            expect(isinstance(await subject(self.case, outcome), Assessment), "the dialogue was not assessed")

    async def check_typed_errors(self) -> None:
        """A role whose model fails (server down, replies that never fit) raises a typed medagent error with a
        message, never a raw exception."""
        if self.failing is None:
            raise NotApplicable("no failing role given")
        try:
            await self._first_reply(await produced(self.failing, self.case))
        except MedagentError as exc:
            expect(str(exc).strip(), f"the {type(exc).__name__} has no message")
        except Exception as exc:  # noqa: BLE001 - an untyped error is what this check reports
            raise AssertionError(f"raised {type(exc).__name__} ({exc}), not a typed medagent error") from None
        else:
            raise AssertionError("the role replied although its model fails")
