"""The real embedded model (SmolLM2-135M on the llama.cpp server) plays doctor, patient, measurement agent
and assessor on real AgentClinic cases. Answer quality is not the point: the protocol, the parsing of
schema-constrained replies, stop handling and leak redaction are."""

from __future__ import annotations

import itertools
import re
from typing import Literal

import pytest

from medagent.agents.doctor import DoctorAgent, diagnosis_choices
from medagent.agents.planner import PlannerConfig
from medagent.agents.pool import PlannerPool
from medagent.dialogue.labels import Label, LabelSet
from medagent.dialogue.protocol import DialogueSettings, Turn, run_dialogue
from medagent.simulators.assessor import Assessment, AssessmentFailed, assess
from medagent.simulators.loaders import load_agentclinic
from medagent.simulators.measurement import MeasurementAgent
from medagent.simulators.patient import SimulatedPatient
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.llama

AGENTCLINIC = SHARED_DATA / "agentclinic" / "agentclinic_medqa.jsonl"
SERVED = "smollm2-135m-instruct"
PlannerRole = Literal["planner", "patient", "measurement", "assessor"]


def _follows_the_protocol(turns: list[Turn], max_turns: int) -> None:
    """Opening by the patient; each doctor ask answered by the patient, each test by the measurement agent;
    a diagnosis only last (or before the patient's closing reply)."""
    assert turns and (turns[0].speaker, turns[0].action) == ("patient", "answer")
    assert [turn.index for turn in turns] == list(range(len(turns)))
    doctor_turns = [turn for turn in turns if turn.speaker == "doctor"]
    assert 1 <= len(doctor_turns) <= max_turns
    for turn, following in itertools.pairwise(turns):
        if turn.speaker in ("patient", "measurement"):
            assert turn.action != "stop" and following.speaker == "doctor"
        elif turn.action == "ask":
            assert following.speaker == "patient"
        elif turn.action == "request_test":
            assert following.speaker == "measurement"
        else:  # only the patient's closing reply may follow a diagnosis
            assert turn.action == "diagnose" and following is turns[-1] and following.speaker == "patient"


@pytest.mark.asyncio
async def test_the_embedded_model_plays_every_role_on_two_agentclinic_cases() -> None:
    cases = load_agentclinic(AGENTCLINIC)
    names = list(dict.fromkeys(case.diagnosis for case in cases[:8]))
    label_set = LabelSet(name="agentclinic-sample", labels=[Label(name=name) for name in names])
    choices = diagnosis_choices(label_set)
    assert choices is not None
    async with PlannerPool() as pool:
        # short replies keep two dialogues under a minute on two CPU cores; a doctor step or a rubric fits
        budgets: dict[PlannerRole, int] = {"planner": 128, "patient": 48, "measurement": 48, "assessor": 96}
        planners = {role: await pool.planner(PlannerConfig(role=role, max_tokens=tokens, seed=11))
                    for role, tokens in budgets.items()}
        # the second case skips the patient's closing reply: both endings are covered, one prompt fewer
        for case, temperament, closing in zip(cases[:2], ("choleric", "phlegmatic"), (True, False), strict=True):
            settings = DialogueSettings(max_turns=3, turn_timeout_s=30, dialogue_timeout_s=150,
                                        patient_closing=closing)
            outcome = await run_dialogue(
                case, label_set=label_set, settings=settings,
                doctor=DoctorAgent(planners["planner"], label_set=label_set, max_text_chars=80),
                patient=SimulatedPatient(planners["patient"], case, temperament=temperament, biases=["recency"]),
                measurement=MeasurementAgent(planners["measurement"], case))

            _follows_the_protocol(outcome.turns, settings.max_turns)
            assert outcome.stop_reason in ("diagnosis", "patient_stop", "turn_limit")
            assert outcome.models == {"doctor": SERVED, "patient": SERVED, "measurement": SERVED}
            assert all(turn.model == SERVED for turn in outcome.turns if turn.speaker == "doctor")
            for turn in outcome.turns:  # every doctor step parsed into a valid action
                if turn.speaker == "doctor":
                    assert turn.action in ("ask", "request_test", "diagnose") and turn.text
                    assert turn.action != "diagnose" or turn.text in choices
            if outcome.stop_reason != "patient_stop":
                assert outcome.diagnosis in choices and outcome.diagnosis_text in choices
                last_doctor = max(turn.index for turn in outcome.turns if turn.speaker == "doctor")
                assert outcome.turns[last_doctor].action == "diagnose"
                assert len(outcome.turns) == last_doctor + 1 + int(closing)
            leak = re.compile(rf"(?<!\w){re.escape(case.diagnosis)}(?!\w)", re.IGNORECASE)
            assert not any(leak.search(turn.text) for turn in outcome.turns if turn.speaker == "patient")

            try:
                assessment = await assess(planners["assessor"], case, outcome, max_reasks=1)
            except AssessmentFailed as failure:  # a typed failure is an accepted outcome for a 135M model
                assert failure.code == "assessment_failed" and failure.details["attempts"] == 2
            else:
                assert isinstance(assessment, Assessment) and assessment.model == SERVED
                assert 1 <= assessment.attempts <= 2
